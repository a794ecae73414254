package udpproxy

import (
	"net/netip"

	"github.com/bbal/bbal/remotes"
)

// overRate drops a query of rem's over its rate limit, counts it, and
// answers every Slip-th such query (over: its number among them) with an
// empty truncated answer from the way it came (l, o), so that a real
// client retries over TCP. It logs the client and its limit at most once
// per 5 s.
func (p *Proxy) overRate(l *listener, rem *remotes.Remote, query []byte, from netip.AddrPort, o *origin, over uint64) {
	rem.CountDrop()
	p.drop(l, DropRateLimited)
	if slip := uint64(p.rate.Slip); slip > 0 && over%slip == 0 {
		p.answerSelf(l, query, from, o, truncated, &p.slips)
	}
	if ok, held := p.rateLog.Allow(); ok {
		p.log.Warn().Stringer("remote_ip", from.Addr()).Float64("limit_qps", p.rate.QPS).Int("burst", p.rate.Burst).
			Uint64("over_limit", over).Int64("suppressed", held).Msg("client over its query rate limit: dropping")
	}
}
