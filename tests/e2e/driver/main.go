// Command driver drives a CNI network list through Debian's libcni (v1.1.2)
// the way containerd does, so the e2e tier can check pycni against a real
// libcni client.
//
//	driver <add|check|del|gc|status|version> --conflist FILE [--netns PATH]
//	       [--cid ID] [--ifname IF] [--cachedir DIR] [--path DIRS]
//	       [--capargs JSON] [--args K=V;...] [--valid JSON]
//
// add prints the result JSON; version prints each plugin's VERSION answer
// and the list's capabilities; the others print nothing on success.  A
// failure prints {"code": N, "msg": "..."} (code 0 when libcni's error
// carries none) and exits 1.
//
// libcni v1.1.2 has no GC or STATUS: gc and status do what libcni >= v1.2
// does (name and cniVersion injected, cni.dev/valid-attachments for GC,
// empty CNI_* except CNI_PATH) with v1.1.2's InjectConf and invoke package.
// gc first DELs, as GCNetworkList does, every cached attachment of the
// network outside the valid set, with the netns, args and capability args
// it was cached with (libcni >= v1.2 caches the netns; v1.1.2 does not, so
// its entries are DELed without one).
// Build in GOPATH mode: GO111MODULE=off GOPATH=/usr/share/gocode.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
)

type options struct {
	conflist, netns, cid, ifname, cachedir, path, capargs, args, valid string
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: driver <add|check|del|gc|status|version> --conflist FILE ..."))
	}
	verb := os.Args[1]
	var o options
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.StringVar(&o.conflist, "conflist", "", "network config list (or single .conf) file")
	fs.StringVar(&o.netns, "netns", "", "container network namespace path")
	fs.StringVar(&o.cid, "cid", "", "container ID")
	fs.StringVar(&o.ifname, "ifname", "eth0", "interface name")
	fs.StringVar(&o.cachedir, "cachedir", "", "libcni cache dir (results/ lives below it)")
	fs.StringVar(&o.path, "path", os.Getenv("CNI_PATH"), "plugin dirs, ':'-separated")
	fs.StringVar(&o.capargs, "capargs", "", "capability args, a JSON object")
	fs.StringVar(&o.args, "args", "", "CNI_ARGS as K=V;K2=V2")
	fs.StringVar(&o.valid, "valid", "[]", "gc: valid attachments, JSON [{containerID, ifname}]")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail(err)
	}
	if o.cachedir == "" {
		fail(fmt.Errorf("--cachedir is required: the driver never uses /var/lib/cni"))
	}
	list, err := loadList(o.conflist)
	if err != nil {
		fail(err)
	}
	rt, err := runtimeConf(&o)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(o.path), o.cachedir, nil)
	ctx := context.Background()
	switch verb {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		out, err := json.Marshal(res)
		if err != nil {
			fail(err)
		}
		fmt.Println(string(out))
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	case "version":
		err = versions(ctx, cni, list)
	case "gc":
		err = gc(ctx, cni, list, o.valid, o.cachedir)
	case "status":
		err = status(ctx, cni, list)
	default:
		err = fmt.Errorf("unknown verb %q", verb)
	}
	if err != nil {
		fail(err)
	}
}

// loadList reads a .conflist, or up-converts a single-plugin .conf as
// runtimes do.
func loadList(file string) (*libcni.NetworkConfigList, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var probe map[string]interface{}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if _, ok := probe["plugins"]; ok {
		return libcni.ConfListFromBytes(data)
	}
	conf, err := libcni.ConfFromBytes(data)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromConf(conf)
}

func runtimeConf(o *options) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{ContainerID: o.cid, NetNS: o.netns, IfName: o.ifname}
	if o.capargs != "" {
		if err := json.Unmarshal([]byte(o.capargs), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("--capargs: %w", err)
		}
	}
	if o.args != "" {
		for _, pair := range strings.Split(o.args, ";") {
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 {
				return nil, fmt.Errorf("--args: invalid pair %q", pair)
			}
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	return rt, nil
}

// versions probes every plugin with VERSION as libcni does, then validates
// the list (its cniVersion must be in every plugin's supportedVersions).
func versions(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
	type answer struct {
		Type              string   `json:"type"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	out := struct {
		Plugins      []answer `json:"plugins"`
		Capabilities []string `json:"capabilities"`
	}{}
	for _, p := range list.Plugins {
		vi, err := cni.GetVersionInfo(ctx, p.Network.Type)
		if err != nil {
			return fmt.Errorf("VERSION of %s: %w", p.Network.Type, err)
		}
		out.Plugins = append(out.Plugins, answer{p.Network.Type, vi.SupportedVersions()})
	}
	caps, err := cni.ValidateNetworkList(ctx, list)
	if err != nil {
		return err
	}
	out.Capabilities = caps
	if out.Capabilities == nil {
		out.Capabilities = []string{}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

func pluginPath(cni *libcni.CNIConfig, typ string) (string, error) {
	return invoke.FindInPath(typ, cni.Path)
}

func bareArgs(cni *libcni.CNIConfig, verb string) *invoke.Args {
	return &invoke.Args{Command: verb, Path: strings.Join(cni.Path, string(os.PathListSeparator))}
}

// cachedAttachment is what libcni >= v1.2 reads back of a cache entry.
type cachedAttachment struct {
	Kind           string                 `json:"kind"`
	ContainerID    string                 `json:"containerId"`
	IfName         string                 `json:"ifName"`
	NetworkName    string                 `json:"networkName"`
	NetNS          string                 `json:"netns"`
	CniArgs        [][2]string            `json:"cniArgs"`
	CapabilityArgs map[string]interface{} `json:"capabilityArgs"`
}

// staleDel DELs the cached attachments of the list's network that are not
// in attachments, as GCNetworkList's first step; the errors it met (their
// texts, and the first one for its code).
func staleDel(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList,
	attachments []map[string]string, cacheDir string) ([]string, error) {
	keep := map[[2]string]bool{}
	for _, a := range attachments {
		keep[[2]string{a["containerID"], a["ifname"]}] = true
	}
	dir := filepath.Join(cacheDir, "results")
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return []string{err.Error()}, err
	}
	var msgs []string
	var first error
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var c cachedAttachment
		if json.Unmarshal(data, &c) != nil || c.Kind != "cniCacheV1" || c.NetworkName != list.Name {
			continue
		}
		if keep[[2]string{c.ContainerID, c.IfName}] {
			continue
		}
		rt := &libcni.RuntimeConf{ContainerID: c.ContainerID, NetNS: c.NetNS, IfName: c.IfName,
			Args: c.CniArgs, CapabilityArgs: c.CapabilityArgs}
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			if first == nil {
				first = err
			}
			msgs = append(msgs, fmt.Sprintf("failed to delete stale attachment %s %s: %v",
				c.ContainerID, c.IfName, err))
		}
	}
	return msgs, first
}

// gc DELs the stale cached attachments, then sends GC to every plugin,
// continuing past failures, errors joined.
func gc(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, valid, cacheDir string) error {
	var attachments []map[string]string
	if err := json.Unmarshal([]byte(valid), &attachments); err != nil {
		return fmt.Errorf("--valid: %w", err)
	}
	inject := map[string]interface{}{
		"name":                      list.Name,
		"cniVersion":                list.CNIVersion,
		"cni.dev/valid-attachments": attachments,
		"cni.dev/attachments":       attachments,
	}
	msgs, first := staleDel(ctx, cni, list, attachments, cacheDir)
	for _, p := range list.Plugins {
		err := func() error {
			conf, err := libcni.InjectConf(p, inject)
			if err != nil {
				return err
			}
			exe, err := pluginPath(cni, p.Network.Type)
			if err != nil {
				return err
			}
			return invoke.ExecPluginWithoutResult(ctx, exe, conf.Bytes, bareArgs(cni, "GC"), nil)
		}()
		if err != nil {
			if first == nil {
				first = err
			}
			msgs = append(msgs, fmt.Sprintf("failed to GC plugin %s: %v", p.Network.Type, err))
		}
	}
	if first == nil {
		return nil
	}
	return joined{strings.Join(msgs, "\n"), first}
}

// status asks every plugin in order; the first error stops it, unwrapped.
func status(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
	inject := map[string]interface{}{"name": list.Name, "cniVersion": list.CNIVersion}
	for _, p := range list.Plugins {
		conf, err := libcni.InjectConf(p, inject)
		if err != nil {
			return err
		}
		exe, err := pluginPath(cni, p.Network.Type)
		if err != nil {
			return err
		}
		if err := invoke.ExecPluginWithoutResult(ctx, exe, conf.Bytes, bareArgs(cni, "STATUS"), nil); err != nil {
			return err
		}
	}
	return nil
}

// joined keeps the first error reachable for its code (Go 1.19 has no errors.Join).
type joined struct {
	msg   string
	first error
}

func (j joined) Error() string { return j.msg }
func (j joined) Unwrap() error { return j.first }

func fail(err error) {
	out := map[string]interface{}{"code": 0, "msg": err.Error()}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out["code"] = cniErr.Code
		if cniErr.Details != "" {
			out["details"] = cniErr.Details
		}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	os.Exit(1)
}
