// The seed's TCP server (../../../../shared/seed/, "Creating a TCP Server"),
// copied with three changes: require('net') is require('../listenerd-net');
// the server.address() log line runs in the 'listening' event, as Node 20
// itself needs (listen binds after a host lookup); and PORT may come from
// $PORT (0: an ephemeral port) so that tests use no fixed port.
var net = require('../listenerd-net');

var HOST = '127.0.0.1';
var PORT = Number(process.env.PORT || 6969);

// Create a TCP server instance, and call the listen function to start listening on the specified port
// The callback function passed to net.createServer() will be the event handler for the "connection" event
// In each "connection" event, the socket object received by this callback function is unique
var server = net.createServer();
server.listen(PORT, HOST);
server.on('listening', function() {
    console.log('Server listening on ' +
        server.address().address + ':' + server.address().port);
});

server.on('connection', function(sock) {
    console.log('CONNECTED: ' +
         sock.remoteAddress +':'+ sock.remotePort);
});
