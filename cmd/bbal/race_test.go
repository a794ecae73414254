//go:build chaos && race

package main

// raceEnabled: the race detector is on (its shadow memory makes RSS
// meaningless as a leak check).
const raceEnabled = true
