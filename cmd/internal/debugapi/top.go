package debugapi

import (
	"net/http"
	"time"

	"github.com/miekg/dns"

	"github.com/bbal/bbal/udpproxy"
)

// TopReply is GET /v1/top: the busiest clients and questions, most
// first, from one datagram in SampleEvery over the last whole window.
type TopReply struct {
	Now           time.Time     `json:"now"`
	WindowSeconds float64       `json:"window_seconds"`
	SampleEvery   int           `json:"sample_every"`
	Samples       uint64        `json:"samples"` // in the window
	Clients       []TopClient   `json:"clients"`
	Names         []TopQuestion `json:"names"`
}

// TopClient is one of the busiest clients: its estimated queries a
// second (at most qps_error of which may be another's), its backend,
// and its rate limit's state and drops.
type TopClient struct {
	IP          string  `json:"ip"`
	QPS         float64 `json:"qps"`
	QPSError    float64 `json:"qps_error"`
	Backend     uint16  `json:"backend"`
	Backup      uint16  `json:"backup"`
	Limited     bool    `json:"limited"`
	RateLimited uint64  `json:"ratelimited"`
	Drops       uint64  `json:"drops"`
}

// TopQuestion is one of the busiest questions: name (lower case,
// escaped as in a zone file) and type.
type TopQuestion struct {
	Name     string  `json:"name"`
	Type     string  `json:"type"`
	QPS      float64 `json:"qps"`
	QPSError float64 `json:"qps_error"`
}

func (a *api) top(w http.ResponseWriter, r *http.Request) {
	if !checkQuery(w, r) {
		return
	}
	now := a.now()
	t := a.src.UDP.Top(now)
	out := TopReply{Now: now, WindowSeconds: t.Window.Seconds(), SampleEvery: udpproxy.SampleEvery, Samples: t.Samples,
		Clients: []TopClient{}, Names: []TopQuestion{}}
	for _, c := range t.Clients {
		tc := TopClient{IP: c.IP.String(), QPS: c.QPS, QPSError: c.Error}
		if in, ok := a.src.Table.Lookup(c.IP); ok {
			tc.Backend, tc.Backup, tc.Drops, tc.RateLimited = uint16(in.Primary), uint16(in.Backup), in.Drops, in.RateLimited
			tc.Limited = in.Limited(now)
		}
		out.Clients = append(out.Clients, tc)
	}
	for _, q := range t.Names {
		out.Names = append(out.Names, TopQuestion{Name: q.Name, Type: dns.Type(q.Type).String(), QPS: q.QPS, QPSError: q.Error})
	}
	a.reply(w, out)
}
