package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// The process tree of the daemon, read from /proc: which processes, how
// much memory and CPU, which sockets.

// tree returns pid and its descendants (through
// /proc/PID/task/TID/children; a process that exits meanwhile is skipped).
func tree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", out[i]))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// rssKiB is the resident set size (VmRSS) of pid in KiB, 0 when gone.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return 0
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// cpuTicks is the CPU time pid used, and its waited-for children used
// (utime + stime + cutime + cstime), in clock ticks.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	return statTicks(b)
}

// statTicks sums utime, stime, cutime and cstime of a /proc/PID/stat line.
func statTicks(b []byte) int64 {
	// the command name (field 2) may hold spaces: fields count from ')'
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// after ')': state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17)
	if len(f) < 15 {
		return 0
	}
	var sum int64
	for _, k := range []int{11, 12, 13, 14} {
		n, _ := strconv.ParseInt(f[k], 10, 64)
		sum += n
	}
	return sum
}

// treeUsage sums the RSS (KiB) and CPU ticks of pid's process tree.
func treeUsage(pid int) (rss int, ticks int64, procs int) {
	pids := tree(pid)
	for _, p := range pids {
		rss += rssKiB(p)
		ticks += cpuTicks(p)
	}
	return rss, ticks, len(pids)
}

// sockets tells which TCP connections to a local server belong to a
// process tree. GitLab cannot tell the daemon's requests from the inner
// runners' by their User-Agent (both are paas-runner's) nor always by token
// (both use job tokens), but the kernel knows which process holds each
// connection: the client end of a loopback connection is a line of
// /proc/net/tcp, whose inode is one of the holder's /proc/PID/fd links.
// The inner runners run in containers on the host's network (network_mode
// = "host"), so their connections are in the same table, held by processes
// outside the daemon's tree.
type sockets struct {
	root int // the tree's root pid

	mu    sync.Mutex
	known map[uint64]bool // socket inode → held by the tree
}

func newSockets(root int) *sockets { return &sockets{root: root, known: map[uint64]bool{}} }

// owned reports whether the connection from remoteAddr (as the server sees
// the client, "127.0.0.1:port") to the server's port is held by the tree.
// It must be called while the connection is open (during its request).
func (s *sockets) owned(remoteAddr string, serverPort int) bool {
	host, p, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	clientPort, _ := strconv.Atoi(p)
	inode := connInode(net.ParseIP(host), clientPort, serverPort)
	if inode == 0 {
		return false // not in this network namespace: not the daemon's
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.known[inode]; ok {
		return v
	}
	// a connection not seen yet: find out whether the tree holds it
	// (inodes of live sockets are unique and not reused soon)
	for _, pid := range tree(s.root) {
		for _, in := range socketInodes(pid) {
			s.known[in] = true
		}
	}
	if _, ok := s.known[inode]; !ok {
		s.known[inode] = false
	}
	return s.known[inode]
}

// connInode finds the socket inode of the TCP connection whose local end
// is ip:localPort and remote port remotePort, 0 when there is none.
func connInode(ip net.IP, localPort, remotePort int) uint64 {
	want := fmt.Sprintf(":%04X", localPort)
	wantRemote := fmt.Sprintf(":%04X", remotePort)
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 || !strings.HasSuffix(fl[1], want) || !strings.HasSuffix(fl[2], wantRemote) {
				continue
			}
			if a := hexIP(strings.TrimSuffix(fl[1], want)); a != nil && ip != nil && !a.Equal(ip) {
				continue
			}
			n, err := strconv.ParseUint(fl[9], 10, 64)
			if err == nil && n != 0 {
				f.Close()
				return n
			}
		}
		f.Close()
	}
	return 0
}

// hexIP decodes /proc/net/tcp's address: 4 or 16 bytes, in 32-bit words of
// host (little-endian on the architectures this runs on) order.
func hexIP(h string) net.IP {
	var b []byte
	for i := 0; i+8 <= len(h); i += 8 {
		w, err := strconv.ParseUint(h[i:i+8], 16, 32)
		if err != nil {
			return nil
		}
		b = append(b, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	if len(b) != 4 && len(b) != 16 {
		return nil
	}
	return net.IP(b)
}

// socketInodes lists the inodes of pid's open sockets.
func socketInodes(pid int) []uint64 {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []uint64
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if rest, ok := strings.CutPrefix(l, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}
