// Package declare makes a desired set of listeners true: the daemon's
// --listeners file, and ctl apply, which both read the same file format
// (file.go). Plan compares the listeners there are with the set, listener
// by listener, by name (plan.go); Apply carries a plan out through a
// Target (apply.go): the manager in the daemon, the API in ctl. Watcher
// (watch.go) runs the daemon's reconcile whenever the file changes.
//
// Any other source of a desired set (a key-value bucket) builds a Set and
// goes through Plan and Apply the same way.
package declare
