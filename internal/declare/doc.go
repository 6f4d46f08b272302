// Package declare makes a desired set of listeners true: the daemon's
// --listeners file, and ctl apply, which both read the same file format
// (file.go). Plan compares the listeners there are with the set, listener
// by listener, by name (plan.go); Apply carries a plan out through a
// Target (apply.go): the manager in the daemon, the API in ctl. Watcher
// (watch.go) runs the daemon's reconcile whenever the file changes.
//
// Any other source of a desired set (the fleet's key-value bucket,
// internal/fleet) builds a Set and goes through ReconcileSet, the
// reconcile the file's Reconciler makes too. fleetfile.go reads ctl fleet
// apply's file (a listeners file per host) and writes and reads one entry
// as JSON (EncodeEntry, ParseEntry), the bucket's values.
package declare
