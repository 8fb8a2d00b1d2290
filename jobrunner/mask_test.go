package jobrunner

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestMaskerHoldsOnlyASecretsBeginning(t *testing.T) {
	m := newMasker([]string{"s3cr3t-value", "glcbt-job-token"})
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
		whole := newMasker(secrets)
		want := string(whole.write([]byte(in.String()))) + string(whole.release())
		releases := rng.IntN(2) == 0
		m := newMasker(secrets)
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
