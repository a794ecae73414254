package udpproxy

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bbal/bbal/protocol"
	"github.com/bbal/bbal/udpproxy/cache"
)

// Top talkers: one datagram in SampleEvery (at random) of those routed to a client
// (before the rate limit, so that a client over it shows) is sampled into
// two bounded heavy-hitter summaries (space-saving, TopEntries each): its
// client, and its question's name (in lower case) and type. The summaries
// cover a window of TopWindow; the report is the last whole window's,
// scaled to queries a second. A datagram not sampled costs one increment
// of its reader's own counter and a compare; a sampled one takes the
// summaries' lock, scans TopEntries entries of each, and allocates
// nothing. Nothing grows with the names or clients seen.
const (
	SampleEvery = 64
	TopEntries  = 64
	TopWindow   = 5 * time.Second
)

// sampleNext steps l's sampler and reports whether the datagram it is
// for is sampled: one in SampleEvery, at random.
func (l *listener) sampleNext() bool {
	x := l.sampler
	x ^= x << 13
	x ^= x >> 17
	x ^= x << 5
	l.sampler = x
	return x%SampleEvery == 0
}

// talker is one client of a summary.
type talker struct {
	ip         netip.Addr
	count, err uint64 // space-saving: count, and how much of it may be another's
}

// asked is one question of a summary: its name in wire format, lower
// case.
type asked struct {
	name       [maxNameLen]byte
	n          uint8
	qtype      uint16
	count, err uint64
}

// summary is one window's heavy hitters.
type summary struct {
	clients []talker
	names   []asked
	samples uint64
}

func (s *summary) reset() {
	s.clients, s.names, s.samples = s.clients[:0], s.names[:0], 0
}

// addClient counts ip, replacing the least counted when full.
func (s *summary) addClient(ip netip.Addr) {
	low := 0
	for i := range s.clients {
		c := &s.clients[i]
		if c.ip == ip {
			c.count++
			return
		}
		if c.count < s.clients[low].count {
			low = i
		}
	}
	if len(s.clients) < TopEntries {
		s.clients = append(s.clients, talker{ip: ip, count: 1})
		return
	}
	c := &s.clients[low]
	*c = talker{ip: ip, count: c.count + 1, err: c.count}
}

// addName counts the question name (wire format, lower case) and qtype.
func (s *summary) addName(name []byte, qtype uint16) {
	low := 0
	for i := range s.names {
		a := &s.names[i]
		if a.qtype == qtype && string(a.name[:a.n]) == string(name) {
			a.count++
			return
		}
		if a.count < s.names[low].count {
			low = i
		}
	}
	var a *asked
	var count, err uint64 = 1, 0
	if len(s.names) < TopEntries {
		s.names = append(s.names, asked{})
		a = &s.names[len(s.names)-1]
	} else {
		a = &s.names[low]
		count, err = a.count+1, a.count
	}
	a.n = uint8(copy(a.name[:], name))
	a.qtype, a.count, a.err = qtype, count, err
}

// top holds the summaries.
type top struct {
	mu        sync.Mutex
	start     int64 // the current window's, unix nanoseconds
	cur, last summary
	lastFull  bool // last is a whole window just before cur
	name      [maxNameLen]byte
}

func newTop() *top {
	t := &top{}
	for _, s := range []*summary{&t.cur, &t.last} {
		s.clients = make([]talker, 0, TopEntries)
		s.names = make([]asked, 0, TopEntries)
	}
	return t
}

// rotate starts a new window when the current one is over at now.
func (t *top) rotate(now int64) {
	w := int64(TopWindow)
	switch {
	case t.start == 0:
		t.start = now
	case now-t.start >= 2*w: // nothing sampled for a whole window
		t.cur.reset()
		t.last.reset()
		t.lastFull = false
		t.start = now
	case now-t.start >= w:
		t.cur, t.last = t.last, t.cur
		t.cur.reset()
		t.lastFull = true
		t.start += w
	}
}

// sample counts one datagram of query from ip at now, and reports
// whether its question could be read.
func (t *top) sample(ip netip.Addr, query []byte, now int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rotate(now)
	t.cur.samples++
	t.cur.addClient(ip)
	n, qtype, ok := questionName(query, t.name[:])
	if ok {
		t.cur.addName(t.name[:n], qtype)
	}
	return ok
}

// questionName copies the first question's name of query into name
// (wire format, lower case) and returns its length and type; false for a
// query whose question cannot be read.
func questionName(query, name []byte) (int, uint16, bool) {
	if len(query) < protocol.DNSHeaderLen || binary.BigEndian.Uint16(query[4:]) == 0 {
		return 0, 0, false
	}
	end, ok := cache.NameEnd(query, protocol.DNSHeaderLen)
	if !ok || end+4 > len(query) { // QTYPE, QCLASS
		return 0, 0, false
	}
	n := copy(name, query[protocol.DNSHeaderLen:end])
	for i, c := range name[:n] {
		if 'A' <= c && c <= 'Z' {
			name[i] = c + 'a' - 'A' // length bytes are below 64: never letters
		}
	}
	return n, binary.BigEndian.Uint16(query[end:]), true
}

// Talker is one of the busiest clients: its estimated queries a second
// and how far the estimate may be over (space-saving's error).
type Talker struct {
	IP    netip.Addr
	QPS   float64
	Error float64
}

// Question is one of the busiest questions.
type Question struct {
	Name  string // presentation format, lower case, escaped
	Type  uint16
	QPS   float64
	Error float64
}

// TopReport is the busiest clients and questions, most first.
type TopReport struct {
	Window  time.Duration // the window the rates are over
	Samples uint64        // datagrams sampled in it
	Clients []Talker
	Names   []Question
}

// Top returns the busiest clients and questions at now: the last whole
// window's, or the current one's while there is none.
func (p *Proxy) Top(now time.Time) TopReport {
	t := p.top
	t.mu.Lock()
	defer t.mu.Unlock()
	ns := now.UnixNano()
	if t.start != 0 {
		t.rotate(ns)
	}
	s, window := &t.last, TopWindow
	if !t.lastFull {
		s, window = &t.cur, max(time.Duration(ns-t.start), time.Second)
	}
	scale := float64(SampleEvery) / window.Seconds()
	r := TopReport{Window: window, Samples: s.samples}
	for _, c := range s.clients {
		r.Clients = append(r.Clients, Talker{IP: c.ip, QPS: float64(c.count) * scale, Error: float64(c.err) * scale})
	}
	for _, a := range s.names {
		r.Names = append(r.Names, Question{Name: presentName(a.name[:a.n]), Type: a.qtype,
			QPS: float64(a.count) * scale, Error: float64(a.err) * scale})
	}
	slices.SortFunc(r.Clients, func(a, b Talker) int { return cmpDesc(a.QPS, b.QPS) })
	slices.SortFunc(r.Names, func(a, b Question) int { return cmpDesc(a.QPS, b.QPS) })
	return r
}

func cmpDesc(a, b float64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// presentName writes a wire-format name as text, each byte outside
// letters, digits, '-' and '_' escaped as \DDD (RFC 1035's form).
func presentName(wire []byte) string {
	if len(wire) <= 1 {
		return "."
	}
	var b strings.Builder
	for i := 0; i < len(wire) && wire[i] != 0; i += 1 + int(wire[i]) {
		for _, c := range wire[i+1 : i+1+int(wire[i])] {
			switch {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
				b.WriteByte(c)
			default:
				b.WriteByte('\\')
				b.WriteByte('0' + c/100)
				b.WriteByte('0' + c/10%10)
				b.WriteByte('0' + c%10)
			}
		}
		b.WriteByte('.')
	}
	return b.String()
}
