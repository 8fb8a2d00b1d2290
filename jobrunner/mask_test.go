package jobrunner

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestMaskerHoldsOnlyASecretsBeginning(t *testing.T) {
	m := newMasker([]string{"s3cr3t-value", "glcbt-job-token"}, nil)
	// a line that cannot begin a secret goes out whole at once
	if out := m.write([]byte("line one\n")); string(out) != "line one\n" {
		t.Fatalf("held back %q", out)
	}
	if out := m.write([]byte("abc s3cr")); string(out) != "abc " || !m.holding() {
		t.Fatalf("out %q holding %v", out, m.holding())
	}
	if out := m.write([]byte("3t-value done ")); string(out) != "[MASKED] done " {
		t.Fatalf("out %q", out)
	}
	// "g" may begin the token: held; released when no more output comes
	if out := m.write([]byte("ok g")); string(out) != "ok " {
		t.Fatalf("out %q", out)
	}
	if out := m.release(); string(out) != "g" || m.holding() {
		t.Fatalf("released %q", out)
	}
	// the token completed after its beginning was released: the rest is
	// masked, the whole token never appears
	if out := m.write([]byte("lcbt-job-token!\n")); string(out) != "[MASKED]!\n" {
		t.Fatalf("out %q", out)
	}
	// a released beginning that goes on otherwise is not lost nor doubled
	m.write([]byte("x glc"))
	if out := m.release(); string(out) != "glc" {
		t.Fatalf("released %q", out)
	}
	if out := m.write([]byte("ass\n")); string(out) != "ass\n" {
		t.Fatalf("out %q", out)
	}
}

// Whatever the split of the output and the releases in between, no secret
// ever appears whole; without releases the result is that of masking the
// whole output at once.
func TestMaskerRandomSplits(t *testing.T) {
	secrets := []string{"s3cr3t-value", "glcbt-abcdef", "abab", "aab-token"}
	alphabet := []string{"s3cr3t-value", "glcbt-abcdef", "abab", "aab-token", "s3cr", "glc", "a", "b", "ab", "\n", "x", "s3cr3t", "-value"}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 3000; round++ {
		var in strings.Builder
		for n := rng.IntN(12); n >= 0; n-- {
			in.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		whole := newMasker(secrets, nil)
		want := string(whole.write([]byte(in.String()))) + string(whole.release())
		releases := rng.IntN(2) == 0
		m := newMasker(secrets, nil)
		var got bytes.Buffer
		rest := in.String()
		for rest != "" {
			n := 1 + rng.IntN(len(rest))
			got.Write(m.write([]byte(rest[:n])))
			rest = rest[n:]
			if releases && rng.IntN(3) == 0 {
				got.Write(m.release())
			}
		}
		got.Write(m.release())
		for _, s := range secrets {
			if strings.Contains(got.String(), s) {
				t.Fatalf("input %q: secret %q appears in %q", in.String(), s, got.String())
			}
		}
		if !releases && got.String() != want {
			t.Fatalf("input %q: split gives %q, whole %q", in.String(), got.String(), want)
		}
	}
}

func TestTokenPrefixes(t *testing.T) {
	got := tokenPrefixes([]string{" glrt- ", "gldt-", "glrt-", "", "a1-", "a2-", "a3-", "a4-", "a5-", "a6-", "a7-", "a8-", "a9-"})
	// glpat- always; distinct, trimmed; the 10 shortest
	want := "a1-,a2-,a3-,a4-,a5-,a6-,a7-,a8-,a9-,gldt-"
	if strings.Join(got, ",") != want {
		t.Fatalf("%v", got)
	}
	if got := tokenPrefixes(nil); len(got) != 1 || got[0] != "glpat-" {
		t.Fatalf("%v", got)
	}
}

// Like GitLab Runner: a prefix followed by token characters shows as the
// prefix then [MASKED]; the token ends at the first other character.
func TestMaskerTokenPrefixes(t *testing.T) {
	m := newMasker([]string{"s3cr3t-value"}, tokenPrefixes([]string{"gldt-"}))
	in := "pat glpat-Ab3_x.y=z-9 and gldt-QQ\n" + "bare glpat- no token, glp at, s3cr3t-value glpat-s3cr3t-value;\n"
	want := "pat glpat-[MASKED] and gldt-[MASKED]\n" + "bare glpat- no token, glp at, [MASKED] glpat-[MASKED];\n"
	if got := string(m.write([]byte(in))) + string(m.release()); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	// a token's characters are never held back: the mask goes out at once
	m = newMasker(nil, tokenPrefixes(nil))
	if out := m.write([]byte("x glpa")); string(out) != "x " || !m.holding() {
		t.Fatalf("out %q holding %v", out, m.holding())
	}
	if out := m.write([]byte("t-abc")); string(out) != "glpat-[MASKED]" || m.holding() {
		t.Fatalf("out %q holding %v", out, m.holding())
	}
	if out := m.write([]byte("def ok\n")); string(out) != " ok\n" {
		t.Fatalf("out %q", out)
	}
	// a released beginning of a prefix that a later write completes: the
	// token is still masked
	m.write([]byte("glp"))
	if out := m.release(); string(out) != "glp" {
		t.Fatalf("released %q", out)
	}
	if out := m.write([]byte("at-secret!\n")); string(out) != "at-[MASKED]!\n" {
		t.Fatalf("out %q", out)
	}
}

// Prefixed tokens, whatever the split and the releases: no token character
// ever follows a prefix in the log, and without releases the result is that
// of masking the whole output at once.
func TestMaskerTokenRandomSplits(t *testing.T) {
	secrets := []string{"s3cr3t-value", "abab"}
	prefixes := tokenPrefixes([]string{"gldt-", "ab", "abcd"})
	alphabet := []string{"glpat-", "gldt-", "glp", "at-", "g", "ab", "abcd", "cd", "x", "Z9", ".", " ", "\n", "s3cr3t-value", "s3cr", "abab", "-"}
	rng := rand.New(rand.NewPCG(3, 4))
	for round := 0; round < 5000; round++ {
		var in strings.Builder
		for n := rng.IntN(14); n >= 0; n-- {
			in.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		whole := newMasker(secrets, prefixes)
		want := string(whole.write([]byte(in.String()))) + string(whole.release())
		releases := rng.IntN(2) == 0
		m := newMasker(secrets, prefixes)
		var got bytes.Buffer
		rest := in.String()
		for rest != "" {
			n := 1 + rng.IntN(len(rest))
			got.Write(m.write([]byte(rest[:n])))
			rest = rest[n:]
			if releases && rng.IntN(3) == 0 {
				got.Write(m.release())
			}
		}
		got.Write(m.release())
		out := got.String()
		if !releases && out != want {
			t.Fatalf("input %q: split gives %q, whole %q", in.String(), out, want)
		}
		for _, check := range []string{want, out} {
			// scanning like the masker (the shortest prefix at a place
			// decides), a prefix is never followed by a token character
			// other than the beginning of [MASKED]
			for i := 0; i < len(check); {
				n := 0
				for _, p := range prefixes {
					if strings.HasPrefix(check[i:], p) {
						n = len(p)
						break
					}
				}
				if n == 0 {
					i++
					continue
				}
				if end := i + n; end < len(check) && tokenChar[check[end]] {
					t.Fatalf("input %q: token characters after a prefix in %q", in.String(), check)
				}
				i += n
			}
		}
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Fatalf("input %q: secret %q appears in %q", in.String(), s, out)
			}
		}
	}
}
