// Package testbed is the shared kit of bbal's tests: short socket
// directories, real node-mname backend processes, scriptable fake
// backends that speak the protocol frame by frame, DNS queries from chosen
// loopback addresses, and a log capture that tests wait on instead of
// sleeping.
//
// It depends only on package protocol among bbal's packages, so any
// package's tests may use it.
package testbed
