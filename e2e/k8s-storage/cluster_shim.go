// Package integration stands in for etcd's test-cluster package when Kubernetes' etcd3 storage
// tests run against metaStore: each NewClusterV3 starts real `metastore` processes (the binary
// named by METASTORE_BIN) on fresh data directories and free ports, and hands the tests etcd's
// own Go client connected to them. Laid over the vendored package with `go test -overlay`, so
// the Kubernetes tree itself is not edited.
//
// The members of a cluster: the tests' ClusterConfig.Size, or METASTORE_MEMBERS if larger (a
// 3-member cluster with RandClient picking any member is what a production apiserver sees).
package integration

import (
	"fmt"
	"io/ioutil"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/clientv3"
)

// ClusterConfig is the part of etcd's test-cluster configuration the storage tests set.
type ClusterConfig struct {
	Size int
	// How often a watch that asked for progress notifications gets one; metaStore's default
	// (etcd's, 10 minutes) when zero.
	WatchProgressNotifyInterval time.Duration
}

// ClusterV3 is a running metaStore cluster and one etcd client per member.
type ClusterV3 struct {
	dir       string
	processes []*exec.Cmd
	logs      []*os.File
	clients   []*clientv3.Client
}

var nextPort = uint32(os.Getpid()*7919) % 12000

// freePort is a free port below Linux's ephemeral range (32768 and up), where the tests' own
// outgoing connections cannot take it between this check and the member's bind.
func freePort(t testing.TB) int {
	for tries := 0; tries < 12000; tries++ {
		port := 20000 + int(atomic.AddUint32(&nextPort, 1)%12000)
		if listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			listener.Close()
			return port
		}
	}
	t.Fatal("no free port between 20000 and 32000")
	return 0
}

// NewClusterV3 starts a cluster and returns once every member is ready and reachable.
func NewClusterV3(t testing.TB, cfg *ClusterConfig) *ClusterV3 {
	binary := os.Getenv("METASTORE_BIN")
	if binary == "" {
		t.Fatal("METASTORE_BIN must name the metastore binary")
	}
	size := cfg.Size
	if wanted, err := strconv.Atoi(os.Getenv("METASTORE_MEMBERS")); err == nil && wanted > size {
		size = wanted
	}
	dir, err := ioutil.TempDir("", "metastore-k8s-storage-")
	if err != nil {
		t.Fatal(err)
	}
	c := &ClusterV3{dir: dir}
	ports := make([]int, size)
	peers := make([]string, size)
	for i := range ports {
		ports[i] = freePort(t)
		peers[i] = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	}
	for i := range ports {
		log, err := os.Create(filepath.Join(dir, fmt.Sprintf("member-%d.log", i+1)))
		if err != nil {
			c.Terminate(t)
			t.Fatal(err)
		}
		c.logs = append(c.logs, log)
		args := []string{
			"--member-id", strconv.Itoa(i + 1),
			"--cluster", strings.Join(peers, ","),
			"--port", strconv.Itoa(ports[i]),
			"--data-dir", filepath.Join(dir, fmt.Sprintf("data-%d", i+1)),
		}
		if cfg.WatchProgressNotifyInterval > 0 {
			args = append(args, "--watch-progress-notify-interval", cfg.WatchProgressNotifyInterval.String())
		}
		cmd := exec.Command(binary, args...)
		cmd.Stdout, cmd.Stderr = log, log
		// Killed with the test binary, even when a timeout ends it before Terminate runs.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			c.Terminate(t)
			t.Fatalf("starting %s: %v", binary, err)
		}
		c.processes = append(c.processes, cmd)
	}
	for i, port := range ports {
		if err := waitReady(port); err != nil {
			c.Terminate(t)
			t.Fatalf("member %d: %v", i+1, err)
		}
		client, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{fmt.Sprintf("127.0.0.1:%d", port)},
			DialTimeout: 5 * time.Second,
		})
		if err != nil {
			c.Terminate(t)
			t.Fatalf("client for member %d: %v", i+1, err)
		}
		c.clients = append(c.clients, client)
	}
	return c
}

// waitReady polls the member's /readyz: ready means it knows a leader and has caught up.
func waitReady(port int) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	client := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if response, err := client.Get(url); err == nil {
			response.Body.Close()
			if response.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not ready at %s after 30 s", url)
}

// RandClient is a client of any member.
func (c *ClusterV3) RandClient() *clientv3.Client {
	return c.clients[rand.Intn(len(c.clients))]
}

// Client is the client of member i.
func (c *ClusterV3) Client(i int) *clientv3.Client {
	return c.clients[i]
}

// Terminate closes the clients, kills the members and removes their data.
func (c *ClusterV3) Terminate(t testing.TB) {
	for _, client := range c.clients {
		client.Close()
	}
	for _, cmd := range c.processes {
		cmd.Process.Kill()
		cmd.Wait()
	}
	for _, log := range c.logs {
		log.Close()
	}
	if t.Failed() {
		t.Logf("metaStore's logs kept in %s", c.dir)
		return
	}
	os.RemoveAll(c.dir)
}
