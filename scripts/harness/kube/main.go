// pno-kube: the test control plane of proxmox-netbox-operator's harness (envtest-style).
//
// One binary, three roles, chosen by the first argument:
//
//	pno-kube apiserver --etcd-dir DIR --etcd-port N -- <kube-apiserver flags>
//	    an embedded etcd on 127.0.0.1:N (data in DIR), then the real kube-apiserver
//	    in the same process, talking to it.
//	pno-kube controller-manager <kube-controller-manager flags>
//	    the real kube-controller-manager (namespace deletion, garbage collection,
//	    ServiceAccounts and their tokens).
//	pno-kube version
//
// Nothing here listens on anything but loopback unless told to by the flags given.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	role, args := os.Args[1], os.Args[2:]
	switch role {
	case "apiserver":
		os.Exit(runAPIServer(args))
	case "controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "version":
		fmt.Println("pno-kube: kube-apiserver and kube-controller-manager v1.36, embedded etcd v3.6")
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: pno-kube apiserver --etcd-dir DIR --etcd-port N -- <kube-apiserver flags>")
	fmt.Fprintln(os.Stderr, "       pno-kube controller-manager <kube-controller-manager flags>")
	os.Exit(2)
}

// runAPIServer starts the embedded etcd, waits until it serves, then runs kube-apiserver
// with the flags after "--" and --etcd-servers pointing at that etcd.
func runAPIServer(args []string) int {
	fs := flag.NewFlagSet("apiserver", flag.ExitOnError)
	dir := fs.String("etcd-dir", "", "etcd data directory")
	port := fs.Int("etcd-port", 2379, "etcd client port on 127.0.0.1 (the peer port is the next one)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "pno-kube: --etcd-dir is required")
		return 2
	}
	etcd, err := startEtcd(*dir, *port)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pno-kube: etcd: %v\n", err)
		return 1
	}
	defer etcd.Close()
	go func() {
		// etcd failing under the API server is fatal: the API server would only hang.
		if err := <-etcd.Err(); err != nil {
			fmt.Fprintf(os.Stderr, "pno-kube: etcd stopped: %v\n", err)
			os.Exit(1)
		}
	}()

	cmd := apiserver.NewAPIServerCommand()
	rest := append([]string{fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", *port)}, fs.Args()...)
	cmd.SetArgs(rest)
	return cli.Run(cmd)
}

func startEtcd(dir string, port int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "pno-harness"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", port)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", port+1)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Tests write little and restart often: no need to keep history around.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "5m"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		return nil, fmt.Errorf("not ready after 60 s")
	}
}
