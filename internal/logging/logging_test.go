package logging

import "testing"

func TestShortToken(t *testing.T) {
	for in, want := range map[string]string{
		"glrt-t1_2CR8eVxiioB1QmzPZwa": "glrt-t1_2CR8e",
		"abc":                         "abc",
		"GR1348941xyzxyzxyzxyz":       "GR1348941xyzxyzxy",
		"0123456789abcdef":            "01234567",
	} {
		if got := ShortToken(in); got != want {
			t.Errorf("ShortToken(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	if _, err := New("loud", "text"); err == nil {
		t.Error("bad level accepted")
	}
	if _, err := New("info", "xml"); err == nil {
		t.Error("bad format accepted")
	}
	if _, err := New("DEBUG", "json"); err != nil {
		t.Error(err)
	}
}
