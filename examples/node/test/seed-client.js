// The seed's TCP client (../../../../shared/seed/, "Creating a TCP Client"),
// plain Node net, copied with one change: PORT may come from $PORT so that
// tests use no fixed port.
var net = require('net');

var HOST = '127.0.0.1';
var PORT = Number(process.env.PORT || 6969);

var client = new net.Socket();
client.connect(PORT, HOST, function() {

    console.log('CONNECTED TO: ' + HOST + ':' + PORT);
    // Send data to the server immediately after establishing a connection, and the server will receive this data
    client.write('I am Chuck Norris!');

});

// Add a "data" event processing function to the client
// Data is the data sent back by the server
client.on('data', function(data) {

    console.log('DATA: ' + data);
    // Completely close the connection
    client.destroy();

});

// Add a "close" event processing function to the client
client.on('close', function() {
    console.log('Connection closed');
});
