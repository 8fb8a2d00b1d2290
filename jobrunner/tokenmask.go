package jobrunner

import (
	"sort"
	"strings"
)

// Tokens GitLab asks to mask by their prefix (features.token_mask_prefixes,
// plus glpat- always), the way GitLab Runner masks them: a prefix followed
// by one or more token characters (letters, digits, '-', '.', '_', '=')
// shows as the prefix then [MASKED], e.g. glpat-[MASKED]. Like GitLab
// Runner, at most 10 distinct prefixes are used, the shortest ones; where
// two overlap (ab-, ab-cd-) the shortest decides.

const (
	defaultTokenPrefix = "glpat-"
	maxTokenPrefixes   = 10
)

var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-._=" {
		t[c] = true
	}
	return t
}()

// tokenPrefixes are the prefixes to mask: trimmed, distinct, non-empty,
// glpat- included, the 10 shortest.
func tokenPrefixes(fromPayload []string) []string {
	all := append(append([]string(nil), fromPayload...), defaultTokenPrefix)
	sort.SliceStable(all, func(i, j int) bool { return len(all[i]) < len(all[j]) })
	var out []string
	seen := map[string]bool{}
	for _, p := range all {
		p = strings.TrimSpace(p)
		if p == "" || seen[p] || len(out) == maxTokenPrefixes {
			continue
		}
		seen[p] = true
		out = append(out, p)
	}
	return out
}

// tokenMasker masks prefixed tokens in a stream of output arriving in
// pieces. It holds back only a possible beginning of a prefix at the end of
// the output seen so far; a token's characters are never held: the first
// one is replaced by [MASKED] at once and the following ones are dropped
// until a character that cannot be part of a token.
type tokenMasker struct {
	prefixes [][]byte
	first    [256]bool
	maxLen   int
	// tail: the end of the output that may begin a prefix; its first
	// tailSent bytes were already released.
	tail     []byte
	tailSent int
	// in a token: after a prefix, token characters are dropped; masked
	// tells whether [MASKED] was written for this token already.
	inToken bool
	masked  bool
}

func newTokenMasker(prefixes []string) *tokenMasker {
	m := &tokenMasker{}
	prefixes = append([]string(nil), prefixes...)
	sort.SliceStable(prefixes, func(i, j int) bool { return len(prefixes[i]) < len(prefixes[j]) })
	for _, p := range prefixes {
		if p == "" {
			continue
		}
		m.prefixes = append(m.prefixes, []byte(p))
		m.first[p[0]] = true
		m.maxLen = max(m.maxLen, len(p))
	}
	return m
}

func (m *tokenMasker) write(p []byte) []byte {
	if len(m.prefixes) == 0 {
		return p
	}
	b := append(append(make([]byte, 0, len(m.tail)+len(p)), m.tail...), p...)
	sent := m.tailSent
	out := make([]byte, 0, len(b)+len(masked))
	i := 0
	for i < len(b) {
		if m.inToken {
			if tokenChar[b[i]] {
				if !m.masked {
					out = append(out, masked...)
					m.masked = true
				}
				i++
				continue
			}
			m.inToken, m.masked = false, false
		}
		if !m.first[b[i]] {
			if i >= sent {
				out = append(out, b[i])
			}
			i++
			continue
		}
		if n := m.prefixAt(b[i:]); n > 0 {
			// a whole prefix: written as is (minus what was released),
			// then its token masked
			for j := i; j < i+n; j++ {
				if j >= sent {
					out = append(out, b[j])
				}
			}
			i += n
			m.inToken = true
			continue
		}
		if m.beginsPrefix(b[i:]) {
			break // held: more output tells
		}
		if i >= sent {
			out = append(out, b[i])
		}
		i++
	}
	m.tail = append(m.tail[:0], b[i:]...)
	m.tailSent = max(0, sent-i)
	return out
}

// prefixAt is the length of the shortest prefix b begins with, 0 if none.
// The shortest wins, as in GitLab Runner (where a shorter prefix masks what
// follows it, a longer prefix's end included), and so a whole prefix is
// never held back waiting for a longer one.
func (m *tokenMasker) prefixAt(b []byte) int {
	for _, p := range m.prefixes { // shortest first
		if len(b) >= len(p) && string(b[:len(p)]) == string(p) {
			return len(p)
		}
	}
	return 0
}

// beginsPrefix tells whether b (shorter than some prefix) is the beginning
// of one.
func (m *tokenMasker) beginsPrefix(b []byte) bool {
	if len(b) >= m.maxLen {
		return false
	}
	for _, p := range m.prefixes {
		if len(b) < len(p) && string(p[:len(b)]) == string(b) {
			return true
		}
	}
	return false
}

func (m *tokenMasker) release() []byte {
	out := append([]byte(nil), m.tail[m.tailSent:]...)
	m.tailSent = len(m.tail)
	return out
}

func (m *tokenMasker) holding() bool { return len(m.tail) > m.tailSent }
