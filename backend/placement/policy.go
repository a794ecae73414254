package placement

// Policy chooses the backend of a new remote (see Picker.Pick).
type Policy uint8

const (
	PolicyRoundRobin  Policy = iota // the original's round-robin in ID order
	PolicyLeastLoaded               // fewest outstanding queries, fewest remotes; slow ones last
)

func (p Policy) String() string {
	if p == PolicyLeastLoaded {
		return "least-loaded"
	}
	return "rr"
}

// ParsePolicy parses a policy's name, as String gives it.
func ParsePolicy(s string) (Policy, bool) {
	switch s {
	case "rr":
		return PolicyRoundRobin, true
	case "least-loaded":
		return PolicyLeastLoaded, true
	}
	return 0, false
}
