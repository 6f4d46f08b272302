//go:build race

package main

// raceEnabled: the smoke builds the bench with the race detector too.
const raceEnabled = true
