package backend

import "strconv"

// EscapePath makes a file name, which is any string of bytes but NUL and
// '/', safe to show: valid UTF-8 with no control characters, so that it
// is a valid Prometheus label value and JSON string, and reaches a
// terminal as text. It writes the path as Go's %q does, without the
// quotes: printable UTF-8 stays as it is; '\' and '"' are escaped with a
// backslash; control characters and other non-printable runes become \a,
// \b, \f, \n, \r, \t, \v, \xHH, \uHHHH or \UHHHHHHHH; each byte of an
// invalid UTF-8 sequence becomes \xHH. It is reversible:
// strconv.Unquote(`"` + EscapePath(p) + `"`) is p. Backends' paths are
// logged so (be_path, socket_path), and the debug API, the metrics and
// balstat show them so.
//
// (Go's encoding/json would replace an invalid byte with U+FFFD, losing
// it, and would leave a name with "\x1b" and one with byte 0x1b looking
// alike once shown.)
func EscapePath(p string) string {
	q := strconv.Quote(p)
	return q[1 : len(q)-1]
}
