package executortest

import (
	"testing"
)

func TestFakeConforms(t *testing.T) {
	Run(t, func(t *testing.T) Subject {
		f := NewFake()
		return Subject{Executor: f, Inspector: f, RunnerID: "r1"}
	})
}

func TestDirConforms(t *testing.T) {
	Run(t, func(t *testing.T) Subject {
		d := &Dir{Path: t.TempDir()}
		return Subject{Executor: d, Inspector: d, RunnerID: "r1"}
	})
}
