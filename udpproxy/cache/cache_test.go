package cache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const sec = int64(time.Second)

var (
	p1 = Partition{Backend: 1, Epoch: 1}
	p2 = Partition{Backend: 2, Epoch: 1}
)

// query packs a query for name/qtype with id, and with EDNS of size
// (0: none).
func query(t testing.TB, name string, qtype uint16, id uint16, size uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	if size > 0 {
		m.SetEdns0(size, false)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reply packs an answer to q with the records rrs (in the answer
// section) and ns (authority), rcode, and EDNS as q has it.
func reply(t testing.TB, q []byte, rcode int, rrs, ns []string) []byte {
	t.Helper()
	var qm dns.Msg
	if err := qm.Unpack(q); err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetRcode(&qm, rcode)
	m.Authoritative = true
	m.Compress = true
	for _, s := range rrs {
		m.Answer = append(m.Answer, rr(t, s))
	}
	for _, s := range ns {
		m.Ns = append(m.Ns, rr(t, s))
	}
	if o := qm.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), o.Do())
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func key(t testing.TB, c *Cache, q []byte) Key {
	t.Helper()
	k, ok := c.KeyOf(q)
	if !ok {
		t.Fatalf("query not cacheable")
	}
	return k
}

// get looks q up in p at now, returning the unpacked answer or nil.
func get(t testing.TB, c *Cache, q []byte, p Partition, now int64) (*dns.Msg, Result) {
	t.Helper()
	k := key(t, c, q)
	buf := make([]byte, MaxAnswer)
	copy(buf, q)
	n, r := c.Get(buf, &k, p, now)
	if r != Hit {
		return nil, r
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("served answer does not unpack: %v", err)
	}
	return m, r
}

func newCache(entries int) *Cache {
	return New(Config{Entries: entries, Stale: 3600})
}

func TestHitKeepsIDCaseAndAgesTTLs(t *testing.T) {
	c := newCache(1000)
	q := query(t, "svc.example.com.", dns.TypeA, 1, 0)
	a := reply(t, q, dns.RcodeSuccess, []string{"svc.example.com. 60 IN A 10.0.0.1", "svc.example.com. 300 IN A 10.0.0.2"}, nil)
	k := key(t, c, q)
	t0 := 1000 * sec
	if !c.Put(&k, p1, a, t0) {
		t.Fatal("answer not kept")
	}
	q2 := query(t, "SvC.ExAmple.COM.", dns.TypeA, 0xbeef, 0)
	m, r := get(t, c, q2, p1, t0+17*sec+sec/2)
	if r != Hit {
		t.Fatalf("result %d, want a hit", r)
	}
	if m.Id != 0xbeef || m.Question[0].Name != "SvC.ExAmple.COM." {
		t.Errorf("served ID %#x question %q: want the client's", m.Id, m.Question[0].Name)
	}
	if len(m.Answer) != 2 || m.Answer[0].Header().Ttl != 43 || m.Answer[1].Header().Ttl != 283 {
		t.Errorf("answer %v: want TTLs 43 and 283", m.Answer)
	}
	if _, r := get(t, c, q2, p1, t0+60*sec); r != Expired {
		t.Errorf("at its TTL: result %d, want Expired", r)
	}
	if _, r := get(t, c, q2, p1, t0+3661*sec); r != Miss {
		t.Errorf("past its stale limit: result %d, want Miss", r)
	}
}

func TestKeyParts(t *testing.T) {
	c := newCache(1000)
	plain := query(t, "a.example.", dns.TypeA, 1, 0)
	a := reply(t, plain, dns.RcodeSuccess, []string{"a.example. 60 IN A 10.0.0.1"}, nil)
	k := key(t, c, plain)
	c.Put(&k, p1, a, 0)
	if _, r := get(t, c, plain, p2, sec); r != Miss {
		t.Errorf("another backend's partition: result %d, want Miss", r)
	}
	if _, r := get(t, c, plain, Partition{Backend: 1, Epoch: 2}, sec); r != Miss {
		t.Errorf("the backend's next epoch: result %d, want Miss", r)
	}
	for _, q := range [][]byte{
		query(t, "a.example.", dns.TypeA, 1, 1232), // EDNS
		query(t, "a.example.", dns.TypeAAAA, 1, 0), // type
		query(t, "b.example.", dns.TypeA, 1, 0),    // name
	} {
		if _, r := get(t, c, q, p1, sec); r != Miss {
			t.Errorf("query %x: result %d, want Miss", q, r)
		}
	}
	rd := query(t, "a.example.", dns.TypeA, 1, 0)
	rd[2] &^= 1
	if _, r := get(t, c, rd, p1, sec); r != Miss {
		t.Errorf("RD clear: result %d, want Miss", r)
	}
	// EDNS size classes: 1232 and 1400 share entries, 4096 does not.
	e1 := query(t, "a.example.", dns.TypeA, 1, 1232)
	ea := reply(t, e1, dns.RcodeSuccess, []string{"a.example. 60 IN A 10.0.0.1"}, nil)
	ke := key(t, c, e1)
	c.Put(&ke, p1, ea, 0)
	if _, r := get(t, c, query(t, "a.example.", dns.TypeA, 9, 1400), p1, sec); r != Hit {
		t.Errorf("EDNS 1400 after 1232: result %d, want Hit", r)
	}
	if _, r := get(t, c, query(t, "a.example.", dns.TypeA, 9, 4096), p1, sec); r != Miss {
		t.Errorf("EDNS 4096 after 1232: result %d, want Miss", r)
	}
}

func TestAnswerFitsClient(t *testing.T) {
	c := newCache(1000)
	q := query(t, "big.example.", dns.TypeA, 1, 1400)
	var rrs []string
	for i := range 70 {
		rrs = append(rrs, fmt.Sprintf("big.example. 60 IN A 10.0.0.%d", i))
	}
	a := reply(t, q, dns.RcodeSuccess, rrs, nil)
	if len(a) <= 1024 || len(a) > 1400 {
		t.Fatalf("answer of %d bytes: the test wants 1025 to 1400", len(a))
	}
	k := key(t, c, q)
	if !c.Put(&k, p1, a, 0) {
		t.Fatal("not kept")
	}
	if _, r := get(t, c, query(t, "big.example.", dns.TypeA, 2, 1400), p1, sec); r != Hit {
		t.Errorf("a client of the same size: %d, want Hit", r)
	}
	if _, r := get(t, c, query(t, "big.example.", dns.TypeA, 2, 1100), p1, sec); r != Miss {
		t.Errorf("a client of the same class that cannot take it: %d, want Miss", r)
	}
}

func TestNegativeAnswers(t *testing.T) {
	c := newCache(1000)
	soa := "example. 300 IN SOA ns.example. admin.example. 1 60 60 600 5"
	for _, tc := range []struct {
		name  string
		rcode int
		qtype uint16
	}{{"nx.example.", dns.RcodeNameError, dns.TypeA}, {"nodata.example.", dns.RcodeSuccess, dns.TypeTXT}} {
		q := query(t, tc.name, tc.qtype, 1, 0)
		a := reply(t, q, tc.rcode, nil, []string{soa})
		k := key(t, c, q)
		if !c.Put(&k, p1, a, 0) {
			t.Fatalf("%s: not kept", tc.name)
		}
		m, r := get(t, c, q, p1, 2*sec)
		if r != Hit || m.Rcode != tc.rcode || len(m.Ns) != 1 || m.Ns[0].Header().Ttl != 3 {
			t.Errorf("%s at 2 s: %d %v, want a hit with the SOA at TTL 3 (its minimum, 5, less 2)", tc.name, r, m)
		}
		if _, r := get(t, c, q, p1, 5*sec); r != Expired {
			t.Errorf("%s at the SOA minimum: %d, want Expired", tc.name, r)
		}
		// No SOA: not kept (RFC 2308).
		bare := reply(t, q, tc.rcode, nil, nil)
		if c.Put(&k, p2, bare, 0) {
			t.Errorf("%s: a negative answer with no SOA was kept", tc.name)
		}
	}
}

func TestNotKept(t *testing.T) {
	c := newCache(1000)
	q := query(t, "a.example.", dns.TypeA, 1, 1232)
	k := key(t, c, q)
	ok := reply(t, q, dns.RcodeSuccess, []string{"a.example. 60 IN A 10.0.0.1"}, nil)
	mod := func(f func(m *dns.Msg)) []byte {
		var m dns.Msg
		if err := m.Unpack(ok); err != nil {
			t.Fatal(err)
		}
		f(&m)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := map[string][]byte{
		"truncated": mod(func(m *dns.Msg) { m.Truncated = true }),
		"SERVFAIL":  mod(func(m *dns.Msg) { m.Rcode = dns.RcodeServerFailure }),
		"REFUSED":   mod(func(m *dns.Msg) { m.Rcode = dns.RcodeRefused }),
		"FORMERR":   mod(func(m *dns.Msg) { m.Rcode = dns.RcodeFormatError }),
		"TTL 0":     mod(func(m *dns.Msg) { m.Answer[0].Header().Ttl = 0 }),
		"TTL top":   mod(func(m *dns.Msg) { m.Answer[0].Header().Ttl = 1 << 31 }),
		"OPT option": mod(func(m *dns.Msg) {
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "ab"})
		}),
		"TSIG": mod(func(m *dns.Msg) {
			m.Extra = append(m.Extra, &dns.TSIG{Hdr: dns.RR_Header{Name: "k.", Rrtype: dns.TypeTSIG, Class: dns.ClassANY},
				Algorithm: dns.HmacSHA256, TimeSigned: 1, Fudge: 300, MACSize: 0, OrigId: 1})
		}),
		"other question": reply(t, query(t, "b.example.", dns.TypeA, 1, 1232), dns.RcodeSuccess, []string{"b.example. 60 IN A 10.0.0.1"}, nil),
		"trailing bytes": append(bytes.Clone(ok), 0),
		"cut short":      ok[:len(ok)-3],
		"not an answer":  q,
		"referral":       mod(func(m *dns.Msg) { m.Answer = nil; m.Ns = []dns.RR{rr(t, "example. 60 IN NS ns.example.")} }),
	}
	for name, a := range cases {
		if c.Put(&k, p1, a, 0) {
			t.Errorf("%s: kept", name)
		}
	}
	if c.Stats().Entries != 0 {
		t.Errorf("entries %d, want 0", c.Stats().Entries)
	}
	if !c.Put(&k, p1, ok, 0) {
		t.Error("the good answer was not kept")
	}
}

func TestKeyOfBypasses(t *testing.T) {
	c := newCache(1000)
	good := query(t, "a.example.", dns.TypeA, 1, 0)
	mk := func(f func(m *dns.Msg)) []byte {
		var m dns.Msg
		m.Unpack(good)
		f(&m)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := map[string][]byte{
		"ECS": mk(func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{10, 0, 0, 0}}}
		}),
		"cookie": mk(func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}}
		}),
		"EDNS version 1": mk(func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }),
		"two questions":  mk(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }),
		"notify":         mk(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }),
		"an answer":      mk(func(m *dns.Msg) { m.Response = true }),
		"AXFR":           mk(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAXFR }),
		"answer record":  mk(func(m *dns.Msg) { m.Answer = []dns.RR{rr(t, "a.example. 60 IN A 10.0.0.1")} }),
		"trailing byte":  append(bytes.Clone(good), 0),
		"short":          good[:len(good)-1],
	}
	for name, q := range cases {
		if _, ok := c.KeyOf(q); ok {
			t.Errorf("%s: cacheable", name)
		}
	}
	if _, ok := c.KeyOf(good); !ok {
		t.Error("a plain query is not cacheable")
	}
}

func TestServeStale(t *testing.T) {
	c := newCache(1000)
	q := query(t, "a.example.", dns.TypeA, 1, 0)
	k := key(t, c, q)
	c.Put(&k, p1, reply(t, q, dns.RcodeSuccess, []string{"a.example. 60 IN A 10.0.0.1"}, nil), 0)
	buf := make([]byte, MaxAnswer)
	copy(buf, q)
	if n := c.GetStale(buf, &k, p1, 100*sec); n == 0 {
		t.Fatal("not served stale")
	} else {
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil || m.Answer[0].Header().Ttl != StaleTTL {
			t.Errorf("stale answer %v (%v): want TTL %d", &m, err, StaleTTL)
		}
	}
	copy(buf, q)
	if n := c.GetStale(buf, &k, p1, (60+3600)*sec); n != 0 {
		t.Error("served stale past the stale limit")
	}
	if s := c.Stats(); s.Stale != 1 || s.Hits != 0 {
		t.Errorf("stale %d hits %d, want 1, 0", s.Stale, s.Hits)
	}
}

func TestEvictionAndBytes(t *testing.T) {
	c := New(Config{Entries: Ways, Stale: 0}) // one set
	put := func(i int, n int, now int64) {
		name := fmt.Sprintf("n%d.example.", i)
		q := query(t, name, dns.TypeA, 1, 4096)
		var rrs []string
		for r := range n {
			rrs = append(rrs, fmt.Sprintf("%s 60 IN A 10.0.%d.%d", name, r/256, r%256))
		}
		k := key(t, c, q)
		if !c.Put(&k, p1, reply(t, q, dns.RcodeSuccess, rrs, nil), now) {
			t.Fatalf("%d not kept", i)
		}
	}
	hit := func(i int) bool {
		_, r := get(t, c, query(t, fmt.Sprintf("n%d.example.", i), dns.TypeA, 1, 4096), p1, sec)
		return r == Hit
	}
	for i := range Ways {
		put(i, 1, 0)
	}
	hit(0) // 1 is now the least recently used
	put(Ways, 1, 0)
	if hit(1) || !hit(0) || !hit(Ways) {
		t.Errorf("the least recently used was not the one put out")
	}
	if s := c.Stats(); s.Evicted != 1 || s.Entries != Ways {
		t.Errorf("evicted %d entries %d, want 1, %d", s.Evicted, s.Entries, Ways)
	}
	// Large answers: the set's arena holds fewer.
	for i := 100; i < 110; i++ {
		put(i, 80, 0) // about 1.3 kB each
	}
	s := c.Stats()
	if s.Bytes > arenaLen || s.Entries > 3 || s.Entries < 2 {
		t.Errorf("%d entries in %d bytes: want 2 or 3 in at most %d", s.Entries, s.Bytes, arenaLen)
	}
	if !hit(109) || !hit(108) {
		t.Error("the latest large answers are not kept")
	}
}

func TestFlushAndSweep(t *testing.T) {
	c := newCache(1000)
	for i, name := range []string{"a.example.", "b.example.", "A.example."} {
		q := query(t, name, dns.TypeA, 1, 0)
		k := key(t, c, q)
		c.Put(&k, Partition{Backend: uint16(i + 1), Epoch: 1}, reply(t, q, dns.RcodeSuccess, []string{name + " 60 IN A 10.0.0.1"}, nil), 0)
		q = query(t, name, dns.TypeTXT, 1, 0)
		k = key(t, c, q)
		c.Put(&k, Partition{Backend: uint16(i + 1), Epoch: 1}, reply(t, q, dns.RcodeSuccess, []string{name + ` 60 IN TXT "x"`}, nil), 0)
	}
	wire := make([]byte, 256)
	n, _ := dns.PackDomainName("a.EXAMPLE.", wire, 0, nil, false)
	if got := c.FlushName(wire[:n]); got != 4 {
		t.Errorf("FlushName flushed %d, want 4 (two names' A and TXT)", got)
	}
	if got := c.Sweep(0, func(p Partition) bool { return p.Backend != 2 }); got != 2 {
		t.Errorf("Sweep removed %d, want backend 2's two", got)
	}
	if c.Stats().Entries != 0 {
		t.Errorf("entries %d, want 0", c.Stats().Entries)
	}
	q := query(t, "c.example.", dns.TypeA, 1, 0)
	k := key(t, c, q)
	c.Put(&k, p1, reply(t, q, dns.RcodeSuccess, []string{"c.example. 60 IN A 10.0.0.1"}, nil), 0)
	if got := c.Sweep((60+3600)*sec, func(Partition) bool { return true }); got != 1 {
		t.Errorf("Sweep past the stale limit removed %d, want 1", got)
	}
	c.Put(&k, p1, reply(t, q, dns.RcodeSuccess, []string{"c.example. 60 IN A 10.0.0.1"}, nil), 0)
	if got := c.Flush(); got != 1 || c.Stats().Flushed != 5 || c.Stats().Bytes != 0 {
		t.Errorf("Flush: %d, stats %+v", got, c.Stats())
	}
}

func TestSnapshot(t *testing.T) {
	c := newCache(1000)
	var qs [][]byte
	for i := range 50 {
		q := query(t, fmt.Sprintf("n%d.example.", i), dns.TypeA, 1, 0)
		k := key(t, c, q)
		c.Put(&k, Partition{Backend: uint16(1 + i%2), Epoch: 7}, reply(t, q, dns.RcodeSuccess, []string{fmt.Sprintf("n%d.example. 60 IN A 10.0.0.1", i)}, nil), 0)
		qs = append(qs, q)
	}
	var b bytes.Buffer
	if err := c.WriteSnapshot(&b, 10*sec, 1<<20); err != nil {
		t.Fatal(err)
	}
	d := New(Config{Entries: 1000, Stale: 3600})
	n, err := d.ReadSnapshot(bytes.NewReader(b.Bytes()), func(be uint16) (Partition, bool) {
		return Partition{Backend: be, Epoch: 1}, be == 1
	}, 10*sec)
	if err != nil || n != 25 {
		t.Fatalf("read %d, %v: want backend 1's 25", n, err)
	}
	m, r := get(t, d, qs[0], Partition{Backend: 1, Epoch: 1}, 20*sec)
	if r != Hit || m.Answer[0].Header().Ttl != 40 {
		t.Errorf("restored entry at 20 s: %d %v, want a hit with TTL 40", r, m)
	}
	// Bounded: a smaller successor reads it all and keeps what fits.
	e := New(Config{Entries: 8, Stale: 3600})
	r2 := bytes.NewReader(b.Bytes())
	if n, err := e.ReadSnapshot(r2, func(be uint16) (Partition, bool) { return Partition{Backend: be}, true }, 10*sec); err != nil || n != 8 || r2.Len() != 0 {
		t.Errorf("small successor: kept %d, %v, %d bytes unread", n, err, r2.Len())
	}
	// Broken streams are errors, not hangs or panics.
	for _, cut := range []int{1, 5, b.Len() - 1} {
		if _, err := New(Config{Entries: 100}).ReadSnapshot(bytes.NewReader(b.Bytes()[:cut]), func(be uint16) (Partition, bool) { return Partition{}, true }, 0); err == nil {
			t.Errorf("a snapshot cut at %d read without error", cut)
		}
	}
	bad := binary.LittleEndian.AppendUint16(nil, 3)
	if _, err := d.ReadSnapshot(bytes.NewReader(bad), func(uint16) (Partition, bool) { return Partition{}, true }, 0); err == nil {
		t.Error("a record of length 3 read without error")
	}
}

func TestNoAllocations(t *testing.T) {
	c := newCache(1000)
	q := query(t, "svc.example.com.", dns.TypeA, 1, 1232)
	a := reply(t, q, dns.RcodeSuccess, []string{"svc.example.com. 60 IN A 10.0.0.1"}, nil)
	k := key(t, c, q)
	c.Put(&k, p1, a, 0)
	buf := make([]byte, MaxAnswer)
	if n := testing.AllocsPerRun(1000, func() {
		copy(buf, q)
		k, _ := c.KeyOf(buf[:len(q)])
		if _, r := c.Get(buf, &k, p1, sec); r != Hit {
			t.Fatal("miss")
		}
	}); n != 0 {
		t.Errorf("a hit allocates %v times", n)
	}
	if n := testing.AllocsPerRun(1000, func() { c.Put(&k, p1, a, 0) }); n != 0 {
		t.Errorf("a put allocates %v times", n)
	}
}

// TestLowerCaseOnlyASCII: DNS names compare without case for ASCII
// letters only (RFC 4343).
func TestLowerCaseOnlyASCII(t *testing.T) {
	for i := range 256 {
		want := byte(i)
		if i >= 'A' && i <= 'Z' {
			want = byte(strings.ToLower(string(rune(i)))[0])
		}
		if lower[i] != want {
			t.Fatalf("lower[%#x] = %#x", i, lower[i])
		}
	}
}
