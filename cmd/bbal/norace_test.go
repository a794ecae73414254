//go:build chaos && !race

package main

const raceEnabled = false
