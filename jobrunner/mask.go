package jobrunner

import "bytes"

var masked = []byte("[MASKED]")

// masker replaces secrets in a stream of output that arrives in pieces.
//
// It holds back only what may be the beginning of a secret at the end of
// the output seen so far (tail), never more, so that everything else can
// be sent at once. A held-back tail that no more output completes is
// released by the trace after a while (release): a job that prints half a
// secret and then nothing must still have its line in the log. If output
// then completes the secret, the released part is already out, but the
// rest of the secret is replaced by [MASKED]: the whole secret never
// appears in the log.
//
// Its output then goes through tokens, which masks tokens by their prefix
// (tokenmask.go) and holds back, the same way, only a possible beginning
// of a prefix.
type masker struct {
	tokens  *tokenMasker
	masks   [][]byte
	maxMask int
	first   [256]bool // bytes a secret begins with
	// tail: the end of the output that may begin a secret; its first
	// tailSent bytes were already released.
	tail     []byte
	tailSent int
}

// newMasker masks secrets (values) and the tokens that begin with one of
// tokenPrefixes (see tokenPrefixes).
func newMasker(secrets, tokenPrefixes []string) *masker {
	m := &masker{tokens: newTokenMasker(tokenPrefixes)}
	seen := map[string]bool{}
	for _, s := range secrets {
		if len(s) >= 4 && !seen[s] { // like GitLab, shorter values cannot be masked safely
			seen[s] = true
			m.masks = append(m.masks, []byte(s))
			m.maxMask = max(m.maxMask, len(s))
			m.first[s[0]] = true
		}
	}
	return m
}

// write takes the next output and returns what can go to the log now.
func (m *masker) write(p []byte) []byte { return m.tokens.write(m.writeValues(p)) }

// writeValues masks the secret values.
func (m *masker) writeValues(p []byte) []byte {
	if len(m.masks) == 0 {
		return p
	}
	if len(m.tail) == 0 && m.clean(p) {
		return p // the common case: nothing to mask, nothing to hold
	}
	b := make([]byte, 0, len(m.tail)+len(p))
	b = append(append(b, m.tail...), p...)
	sent := m.tailSent
	out := make([]byte, 0, len(p)+len(masked))
	// emit appends b[from:to] minus what was already released
	emit := func(from, to int) {
		if from < sent {
			from = sent
		}
		if from < to {
			out = append(out, b[from:to]...)
		}
	}
	next := make([]int, len(m.masks)) // next match of each mask at or after pos, -1 none
	for i, mk := range m.masks {
		next[i] = bytes.Index(b, mk)
	}
	pos := 0
	for {
		// the earliest match, the longest at a same place
		best := -1
		for i, n := range next {
			if n < 0 {
				continue
			}
			if n < pos { // overlapped by the last match: look further
				if j := bytes.Index(b[pos:], m.masks[i]); j >= 0 {
					n = pos + j
				} else {
					n = -1
				}
				next[i] = n
				if n < 0 {
					continue
				}
			}
			if best < 0 || n < next[best] || n == next[best] && len(m.masks[i]) > len(m.masks[best]) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		at := next[best]
		emit(pos, at)
		out = append(out, masked...) // also when it began in what was released
		pos = at + len(m.masks[best])
	}
	hold := m.holdFrom(b, pos)
	emit(pos, hold)
	m.tail = append(m.tail[:0], b[hold:]...)
	m.tailSent = max(0, sent-hold)
	return out
}

// clean tells whether p holds no secret and ends with nothing that may
// begin one.
func (m *masker) clean(p []byte) bool {
	for _, mk := range m.masks {
		if bytes.Contains(p, mk) {
			return false
		}
	}
	return m.holdFrom(p, 0) == len(p)
}

// holdFrom is where the longest end of b (from pos on) that is a proper
// beginning of a secret starts; len(b) when there is none.
func (m *masker) holdFrom(b []byte, pos int) int {
	for j := max(pos, len(b)-m.maxMask+1); j < len(b); j++ {
		if !m.first[b[j]] {
			continue
		}
		for _, mk := range m.masks {
			if n := len(b) - j; n < len(mk) && b[j] == mk[0] && bytes.Equal(b[j:], mk[:n]) {
				return j
			}
		}
	}
	return len(b)
}

// release returns the held-back tail not released yet.
func (m *masker) release() []byte {
	out := append([]byte(nil), m.tail[m.tailSent:]...)
	m.tailSent = len(m.tail)
	return append(m.tokens.write(out), m.tokens.release()...)
}

// holding tells whether some output is held back.
func (m *masker) holding() bool { return len(m.tail) > m.tailSent || m.tokens.holding() }
