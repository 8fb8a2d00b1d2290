package jobrunner

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"gitlab.com/paas-runner/paas-runner/job"
)

// serviceAliases are the names a service answers to: its explicit aliases
// (space or comma separated), and the names derived from its image like
// GitLab Runner: tutum/wordpress:latest → tutum-wordpress, tutum__wordpress.
func serviceAliases(s job.Service, vars job.Variables) []string {
	var out []string
	seen := map[string]bool{}
	add := func(a string) {
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, a := range strings.FieldsFunc(vars.Expand(s.Alias), func(r rune) bool { return r == ' ' || r == ',' }) {
		add(a)
	}
	name := vars.Expand(s.Name)
	if i := strings.LastIndex(name, "@"); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	add(strings.ReplaceAll(name, "/", "-"))
	add(strings.ReplaceAll(name, "/", "__"))
	return out
}

// startServices creates the job's network and one container per service on
// it, then waits (bounded) until their exposed ports accept connections.
func (r *runner) startServices(ctx context.Context) error {
	if len(r.p.Services) == 0 {
		return nil
	}
	nw, err := r.docker.NetworkCreate(ctx, r.name+"-network", network.CreateOptions{
		Driver: "bridge", Labels: r.labels()})
	if err != nil {
		return fmt.Errorf("creating the job network: %w", err)
	}
	r.network = nw.ID
	type started struct {
		name  string
		id    string
		ports []int
	}
	var all []started
	for i, s := range r.p.Services {
		img := r.expanded.Expand(s.Name)
		if img == "" {
			continue
		}
		if err := r.checkAllowed(img, "services", r.o.Config.Docker.AllowedServices); err != nil {
			return err
		}
		if err := r.pullImage(ctx, img, s.PullPolicy, nil); err != nil {
			return err
		}
		aliases := serviceAliases(s, r.expanded)
		env, _ := r.env()
		for _, v := range s.Variables {
			env = append(env, v.Key+"="+r.expanded.Expand(v.Value))
		}
		cfg := &container.Config{Image: img, Env: env, Labels: r.labels()}
		if len(s.Entrypoint) > 0 {
			cfg.Entrypoint = s.Entrypoint
		}
		if len(s.Command) > 0 {
			cfg.Cmd = s.Command
		}
		binds, err := r.volumeBinds(ctx)
		if err != nil {
			return err
		}
		hc := serviceHostConfig(r.o.Config.Docker)
		hc.NetworkMode = container.NetworkMode(nw.ID)
		hc.Binds = binds
		c, err := r.docker.ContainerCreate(ctx, cfg, &hc,
			&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{nw.ID: {Aliases: aliases}}}, nil,
			fmt.Sprintf("%s-service-%d", r.name, i))
		if err != nil {
			return fmt.Errorf("creating service %s: %w", img, err)
		}
		r.track(c.ID)
		if err := r.docker.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			return fmt.Errorf("starting service %s: %w", img, err)
		}
		r.printf("Starting service %s as %s...\n", img, strings.Join(aliases, ", "))
		var ports []int
		for _, p := range s.Ports {
			ports = append(ports, p.Number)
		}
		if ii, err := r.docker.ImageInspect(ctx, img); err == nil && ii.Config != nil {
			for p := range ii.Config.ExposedPorts { // "80/tcp"
				num, proto, _ := strings.Cut(p, "/")
				if n, err := strconv.Atoi(num); err == nil && (proto == "" || proto == "tcp") {
					ports = append(ports, n)
				}
			}
		}
		all = append(all, started{img, c.ID, ports})
	}
	netName := r.name + "-network"
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range all {
		info, err := r.docker.ContainerInspect(ctx, s.id)
		if err != nil || info.NetworkSettings == nil || info.NetworkSettings.Networks[netName] == nil {
			continue
		}
		ip := info.NetworkSettings.Networks[netName].IPAddress
		for _, port := range s.ports {
			addr := net.JoinHostPort(ip, strconv.Itoa(port))
			r.printf("Waiting for service %s on port %d...\n", s.name, port)
			for {
				conn, err := net.DialTimeout("tcp", addr, time.Second)
				if err == nil {
					conn.Close()
					break
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					r.printf("%sWARNING: service %s did not answer on port %d in time: %v%s\n", ansiBoldRed, s.name, port, err, ansiReset)
					break
				}
				time.Sleep(200 * time.Millisecond) // polling a port has no event to wait on
			}
		}
	}
	return nil
}
