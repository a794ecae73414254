// Package scale holds the scale-out test (make scale-test): several bbal
// hosts behind one router that spreads the clients over them by ECMP, each
// host announcing the service address by BGP while its /readyz says it is
// ready, as anycast DNS is run past one host.
//
// # Topology
//
// The test builds it from network namespaces and veth pairs, all named
// bbs-PID-… (a run deletes what a dead run left):
//
//	client (10.99.0.1-64) ── router ─┬─ h1 (10.0.1.2) lo 10.53.0.53: bbal, h1-a, h1-b, ExaBGP
//	                          BIRD 2 ├─ h2 (10.0.2.2) lo 10.53.0.53: bbal, h2-a, h2-b, ExaBGP
//	                                 └─ h3 (10.0.3.2) lo 10.53.0.53: bbal, h3-a, h3-b, ExaBGP
//
// The router runs BIRD 2 (AS 65000), which takes the hosts' routes to
// 10.53.0.53/32 (AS 65053 each) and, with merge paths, puts one multipath
// route into the kernel. The router hashes on the source and destination
// addresses only (net.ipv4.fib_multipath_hash_policy=0), so that a client
// keeps its host whatever source port each query has. Each host runs bbal
// (the binary of this tree) on 0.0.0.0:53, with -m 127.0.0.1:9153, in front
// of two demo backends, and ExaBGP's healthcheck, which announces the
// route while `curl -fs http://127.0.0.1:9153/readyz` succeeds and
// withdraws it otherwise.
//
// # What it proves
//
//   - each client address sticks to one host, and to one backend there,
//     over queries from new source ports;
//   - the clients are spread over every host;
//   - bbal stopped by SIGTERM on one host, or all of one host's backends
//     stopped, takes that host's path out of the router's route within a
//     few seconds, and its clients are answered by the others;
//   - bbal or the backends started again bring the path back, and each
//     client returns to the host it had.
//
// It needs root, network namespaces and the Debian packages bird2,
// exabgp, curl and iproute2: without root or namespaces it is skipped,
// and so it is without a tool, except under CI (CI=true), where a missing
// tool fails it.
package scale
