package coordinatortest

import (
	"net/http"
	"time"
)

// Observer watches the fake GitLab's traffic as it happens, for
// benchmarks that time what GitLab sees (bench/load): when each request
// arrives and from which connection, when each piece of a job log lands.
type Observer struct {
	// Request is called for every request as it arrives, before it is
	// handled, without the server's lock (it may call the server). The
	// client's connection is still open: r.RemoteAddr names it.
	Request func(r *http.Request)
	// Trace is called for every trace chunk appended to a job's log
	// (PATCH …/trace at the right offset; visible in GitLab from then on,
	// even when an injected failure loses the answer), with the server's
	// lock held: it must not call the server. Data is the chunk's own copy.
	Trace func(TraceChunk)
}

// TraceChunk is a piece of a job log as it arrived.
type TraceChunk struct {
	At     time.Time
	JobID  int64
	Offset int // where the chunk starts in the job log
	Data   []byte
}

// Observe installs o (replacing any previous observer); a zero Observer
// removes it. It may be called while the server serves.
func (s *Server) Observe(o Observer) { s.observer.Store(&o) }

func (s *Server) observeRequest(r *http.Request) {
	if o := s.observer.Load(); o != nil && o.Request != nil {
		o.Request(r)
	}
}

func (s *Server) observeTrace(id int64, offset int, data []byte) {
	if o := s.observer.Load(); o != nil && o.Trace != nil {
		o.Trace(TraceChunk{At: time.Now(), JobID: id, Offset: offset, Data: append([]byte(nil), data...)})
	}
}
