// Package man holds the manual pages of bbal and balstat, bbal(8) and
// balstat(8), as mdoc(7) sources (bbal.8, balstat.8), and the checks
// that keep them true to the commands.
//
// The commands' usage texts (what -h prints) are the one source of the
// options: [Check] compares a page with a usage text, and the commands'
// own tests (TestManPage in cmd/bbal and cmd/balstat) run it on what -h
// prints and on what the flag parsers accept. A new option is one
// `.It Fl X` entry in the page's option list, saying its default.
//
// The pages are installed gzipped by the Debian package (make deb);
// TestLint runs `mandoc -Tlint` on them.
package man
