package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// prompter asks questions on out and reads answers from in, line by line.
// A terminal on in gets secrets without echo; a pipe gets scripted answers.
type prompter struct {
	in  *bufio.Reader
	fd  int // terminal file descriptor of in, or -1
	out io.Writer
}

var errNoAnswer = errors.New("no more answers on standard input")

func newPrompter(in io.Reader, out io.Writer) *prompter {
	p := &prompter{in: bufio.NewReader(in), fd: -1, out: out}
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.fd = int(f.Fd())
	}
	return p
}

func (p *prompter) line() (string, error) {
	s, err := p.in.ReadString('\n')
	if err != nil && (s == "" || !errors.Is(err, io.EOF)) {
		if errors.Is(err, io.EOF) {
			return "", errNoAnswer
		}
		return "", err
	}
	return strings.TrimSpace(s), nil
}

// ask prints help (once) and the question with its default in brackets,
// and repeats until check accepts the answer (an empty answer takes the
// default).
func (p *prompter) ask(help, question, def string, secret bool, check func(string) error) (string, error) {
	if help != "" {
		fmt.Fprintln(p.out, help)
	}
	for {
		prompt := fmt.Sprintf("%s: ", question)
		if def != "" && !secret {
			prompt = fmt.Sprintf("%s [%s]: ", question, def)
		}
		var ans string
		var err error
		if secret && p.fd >= 0 {
			ans, err = p.readSecret(prompt)
		} else {
			fmt.Fprint(p.out, prompt)
			ans, err = p.line()
			if p.fd < 0 {
				fmt.Fprintln(p.out)
			}
		}
		if err != nil {
			return "", err
		}
		if ans == "" {
			ans = def
		}
		if err := check(ans); err != nil {
			fmt.Fprintf(p.out, "Invalid answer: %v\n", err)
			continue
		}
		return ans, nil
	}
}

// readSecret turns echo off before printing the prompt, so that nothing
// typed early is shown, reads a line, and restores the terminal.
func (p *prompter) readSecret(prompt string) (string, error) {
	old, err := unix.IoctlGetTermios(p.fd, unix.TCGETS)
	if err != nil {
		return "", err
	}
	noEcho := *old
	noEcho.Lflag &^= unix.ECHO
	noEcho.Lflag |= unix.ICANON | unix.ISIG
	if err := unix.IoctlSetTermios(p.fd, unix.TCSETS, &noEcho); err != nil {
		return "", err
	}
	defer unix.IoctlSetTermios(p.fd, unix.TCSETS, old)
	fmt.Fprint(p.out, prompt)
	line, err := p.line()
	fmt.Fprintln(p.out)
	return line, err
}
