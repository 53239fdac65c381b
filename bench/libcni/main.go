// pycni-bench-libcni: times CNI operations through libcni, in-process, the
// way containerd, CRI-O and podman drive plugins.
//
// It reads a spec (JSON, stdin) naming variants -- a plugin dir, a conflist,
// the host netns its plugins run in, container netns paths, extra env -- and
// a mode:
//
//	version  GetVersionInfo for each plugin type (a pre-flight check)
//	ops      per round: ADD then DEL of one attachment, for every variant
//	pods     ADD of N pods then DEL of them, at parallelism P
//
// Variants are interleaved (shuffled order each round, or each pod index
// when P is 1) so slow drift on the machine hits every variant equally.
// Each variant's plugins run in its own host netns: its workers are
// goroutines locked to OS threads that entered that netns and a private
// mount namespace with the netns's /sys, as "ip netns exec" does, so every
// exec inherits the right namespaces.  Times come from the monotonic clock
// (time.Since) around the libcni call.  Output: one JSON document on stdout.
//
// Built by bench/__main__.py with Debian's golang-go in GOPATH mode against
// Debian's libcni 1.1.2 (GO111MODULE=off, GOPATH=...:/usr/share/gocode).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

type variantSpec struct {
	Name           string                 `json:"name"`
	Path           []string               `json:"path"`
	Env            []string               `json:"env"`
	Sandbox        string                 `json:"sandbox"`
	CacheDir       string                 `json:"cacheDir"`
	Conflist       json.RawMessage        `json:"conflist"`
	Containers     []string               `json:"containers"`
	IfName         string                 `json:"ifname"`
	CapabilityArgs map[string]interface{} `json:"capabilityArgs"`
	Types          []string               `json:"types"`
}

// sysSetns is setns(2) on linux/amd64 and arm64; the syscall package has no
// constant for it.
var sysSetns = map[string]uintptr{"amd64": 308, "arm64": 268}[runtime.GOARCH]

type spec struct {
	Mode     string        `json:"mode"`
	Rounds   int           `json:"rounds"`
	Warmup   int           `json:"warmup"`
	Pods     int           `json:"pods"`
	Parallel int           `json:"parallel"`
	Seed     int64         `json:"seed"`
	IDPrefix string        `json:"idPrefix"`
	Timeout  float64       `json:"opTimeoutSeconds"` // per libcni call; default 120
	Variants []variantSpec `json:"variants"`
}

type variantOut struct {
	Add       []float64      `json:"add,omitempty"`
	Del       []float64      `json:"del,omitempty"`
	Version   []float64      `json:"version,omitempty"`
	AddWallMs float64        `json:"addWallMs,omitempty"`
	DelWallMs float64        `json:"delWallMs,omitempty"`
	IPs       [][]string     `json:"ips,omitempty"`
	Errors    []string       `json:"errors"`
	ErrorN    map[string]int `json:"errorCount"`
}

// ---- sandboxed workers

// worker runs closures on one OS thread that has entered a host netns.
type worker struct {
	jobs chan func()
}

// enter moves the calling (locked) thread into the netns at path, with a
// private mount namespace whose /sys shows that netns.
func enter(path string) error {
	if sysSetns == 0 {
		return fmt.Errorf("setns: unknown syscall number on %s", runtime.GOARCH)
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	_, _, e := syscall.RawSyscall(sysSetns, uintptr(fd), syscall.CLONE_NEWNET, 0)
	syscall.Close(fd)
	if e != 0 {
		return fmt.Errorf("setns %s: %w", path, e)
	}
	if err := syscall.Unshare(syscall.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount ns: %w", err)
	}
	if err := syscall.Mount("", "/", "", syscall.MS_SLAVE|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("make / rslave: %w", err)
	}
	if err := syscall.Unmount("/sys", syscall.MNT_DETACH); err != nil && err != syscall.EINVAL {
		return fmt.Errorf("umount /sys: %w", err)
	}
	if err := syscall.Mount(filepath.Base(path), "/sys", "sysfs", 0, ""); err != nil {
		return fmt.Errorf("mount /sys: %w", err)
	}
	return nil
}

func newWorker(sandbox string) (*worker, error) {
	w := &worker{jobs: make(chan func())}
	ready := make(chan error)
	go func() {
		// never unlocked: the thread's namespaces are changed for good, and
		// the runtime ends a thread whose goroutine exits while locked
		runtime.LockOSThread()
		if err := enter(sandbox); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for job := range w.jobs {
			job()
		}
	}()
	return w, <-ready
}

func (w *worker) do(job func()) {
	done := make(chan struct{})
	w.jobs <- func() { job(); close(done) }
	<-done
}

// ---- one variant

type envExec struct {
	*invoke.DefaultExec
	env []string
}

// ExecPlugin adds the variant's env (state dirs, agent socket) to libcni's.
func (e *envExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	return e.DefaultExec.ExecPlugin(ctx, path, stdin, append(environ, e.env...))
}

type variant struct {
	spec    variantSpec
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	workers []*worker
	out     *variantOut
	mu      sync.Mutex
}

func newVariant(vs variantSpec, nworkers int) (*variant, error) {
	ex := &envExec{
		DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: io.Discard}},
		env:         vs.Env,
	}
	v := &variant{spec: vs, out: &variantOut{Errors: []string{}, ErrorN: map[string]int{}}}
	v.cni = libcni.NewCNIConfigWithCacheDir(vs.Path, vs.CacheDir, ex)
	if len(vs.Conflist) > 0 && string(vs.Conflist) != "null" {
		list, err := libcni.ConfListFromBytes(vs.Conflist)
		if err != nil {
			return nil, fmt.Errorf("variant %s: conflist: %w", vs.Name, err)
		}
		v.list = list
	}
	for i := 0; i < nworkers; i++ {
		w, err := newWorker(vs.Sandbox)
		if err != nil {
			return nil, fmt.Errorf("variant %s: %w", vs.Name, err)
		}
		v.workers = append(v.workers, w)
	}
	return v, nil
}

// fail counts an error of op (ADD, DEL, VERSION) and keeps the first few.
func (v *variant) fail(op, what string, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.out.ErrorN[op]++
	if len(v.out.Errors) < 5 {
		v.out.Errors = append(v.out.Errors, op+" "+what+": "+strings.ReplaceAll(err.Error(), "\n", " "))
	}
}

func (v *variant) rt(id, netns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: v.spec.IfName,
		CapabilityArgs: v.spec.CapabilityArgs}
}

// opTimeout bounds one libcni call: a hung plugin is killed, counted as an
// error, and the run goes on.
var opTimeout = 120 * time.Second

func opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, opTimeout)
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// add runs one ADD on the calling worker; returns ms (negative on error).
func (v *variant) add(ctx context.Context, id, netns string) (float64, []string) {
	ctx, cancel := opContext(ctx)
	defer cancel()
	start := time.Now()
	res, err := v.cni.AddNetworkList(ctx, v.list, v.rt(id, netns))
	took := ms(time.Since(start))
	if err != nil {
		v.fail("ADD", id, err)
		return -1, nil
	}
	return took, resultIPs(res)
}

func (v *variant) del(ctx context.Context, id, netns string) float64 {
	ctx, cancel := opContext(ctx)
	defer cancel()
	start := time.Now()
	err := v.cni.DelNetworkList(ctx, v.list, v.rt(id, netns))
	took := ms(time.Since(start))
	if err != nil {
		v.fail("DEL", id, err)
		return -1
	}
	return took
}

func resultIPs(res types.Result) []string {
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil
	}
	ips := []string{}
	for _, ip := range r.IPs {
		ips = append(ips, ip.Address.String())
	}
	return ips
}

// ---- modes

// progress prints "done/total" on stderr about ten times per phase of a big
// run, so a long run shows it is moving.
func progress(what string, done, total int, big bool) {
	if !big {
		return
	}
	step := total / 10
	if step < 1 {
		step = 1
	}
	if done%step == 0 || done == total {
		fmt.Fprintf(os.Stderr, "   libcni %s %d/%d\n", what, done, total)
	}
}

func order(rng *rand.Rand, vs []*variant) []*variant {
	o := append([]*variant(nil), vs...)
	rng.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
	return o
}

func runVersion(ctx context.Context, s *spec, vs []*variant, rng *rand.Rand) {
	for r := 0; r < s.Warmup+s.Rounds; r++ {
		for _, v := range order(rng, vs) {
			v := v
			v.workers[0].do(func() {
				for _, t := range v.spec.Types {
					ctx, cancel := opContext(ctx)
					start := time.Now()
					_, err := v.cni.GetVersionInfo(ctx, t)
					cancel()
					took := ms(time.Since(start))
					if err != nil {
						v.fail("VERSION", t, err)
					} else if r >= s.Warmup {
						v.out.Version = append(v.out.Version, took)
					}
				}
			})
		}
	}
}

func runOps(ctx context.Context, s *spec, vs []*variant, rng *rand.Rand) {
	for r := 0; r < s.Warmup+s.Rounds; r++ {
		for _, v := range order(rng, vs) {
			v := v
			id := fmt.Sprintf("%s-%s-%d", s.IDPrefix, v.spec.Name, r)
			v.workers[0].do(func() {
				a, _ := v.add(ctx, id, v.spec.Containers[0])
				d := v.del(ctx, id, v.spec.Containers[0])
				if r < s.Warmup {
					return
				}
				if a >= 0 {
					v.out.Add = append(v.out.Add, a)
				}
				if d >= 0 {
					v.out.Del = append(v.out.Del, d)
				}
			})
		}
		if r >= s.Warmup {
			progress(s.IDPrefix+" rounds", r-s.Warmup+1, s.Rounds, s.Rounds >= 20)
		}
	}
}

func podID(s *spec, v *variant, i int) string {
	return fmt.Sprintf("%s-%s-pod%d", s.IDPrefix, v.spec.Name, i)
}

// runPodsSerial interleaves variants at every pod index: the samples stay
// in pod order, which the growth workload reads.
func runPodsSerial(ctx context.Context, s *spec, vs []*variant, rng *rand.Rand) {
	for _, v := range vs {
		v.out.Add = make([]float64, s.Pods)
		v.out.Del = make([]float64, s.Pods)
		v.out.IPs = make([][]string, s.Pods)
	}
	for i := 0; i < s.Pods; i++ {
		for _, v := range order(rng, vs) {
			v := v
			v.workers[0].do(func() {
				v.out.Add[i], v.out.IPs[i] = v.add(ctx, podID(s, v, i), v.spec.Containers[i])
				if v.out.Add[i] >= 0 {
					v.out.AddWallMs += v.out.Add[i]
				}
			})
		}
		progress(s.IDPrefix+" ADD", i+1, s.Pods, s.Pods >= 50)
	}
	for i := 0; i < s.Pods; i++ {
		for _, v := range order(rng, vs) {
			v := v
			v.workers[0].do(func() {
				v.out.Del[i] = v.del(ctx, podID(s, v, i), v.spec.Containers[i])
				if v.out.Del[i] >= 0 {
					v.out.DelWallMs += v.out.Del[i]
				}
			})
		}
		progress(s.IDPrefix+" DEL", i+1, s.Pods, s.Pods >= 50)
	}
}

// runBatch runs op for pods 0..n-1 on the variant's workers, all at once.
func runBatch(v *variant, n int, op func(i int)) float64 {
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for _, w := range v.workers {
		w := w
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				i := i
				w.do(func() { op(i) })
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return ms(time.Since(start))
}

// runPodsParallel: one variant at a time (a batch needs the machine to
// itself), in a shuffled order, all ADD batches first, then all DELs.
func runPodsParallel(ctx context.Context, s *spec, vs []*variant, rng *rand.Rand) {
	for _, v := range vs {
		v.out.Add = make([]float64, s.Pods)
		v.out.Del = make([]float64, s.Pods)
		v.out.IPs = make([][]string, s.Pods)
	}
	for n, v := range order(rng, vs) {
		v := v
		v.out.AddWallMs = runBatch(v, s.Pods, func(i int) {
			v.out.Add[i], v.out.IPs[i] = v.add(ctx, podID(s, v, i), v.spec.Containers[i])
		})
		progress(s.IDPrefix+" ADD batches", n+1, len(vs), s.Pods >= 50)
	}
	for n, v := range order(rng, vs) {
		v := v
		v.out.DelWallMs = runBatch(v, s.Pods, func(i int) {
			v.out.Del[i] = v.del(ctx, podID(s, v, i), v.spec.Containers[i])
		})
		progress(s.IDPrefix+" DEL batches", n+1, len(vs), s.Pods >= 50)
	}
}

func main() {
	var s spec
	if err := json.NewDecoder(os.Stdin).Decode(&s); err != nil {
		fmt.Fprintf(os.Stderr, "pycni-bench-libcni: bad spec: %v\n", err)
		os.Exit(2)
	}
	nworkers := 1
	if s.Mode == "pods" && s.Parallel > 1 {
		nworkers = s.Parallel
	}
	if s.Mode == "pods" {
		for _, vs := range s.Variants {
			if len(vs.Containers) < s.Pods {
				fmt.Fprintf(os.Stderr, "pycni-bench-libcni: variant %s has %d containers for %d pods\n",
					vs.Name, len(vs.Containers), s.Pods)
				os.Exit(2)
			}
		}
	}
	vs := []*variant{}
	for _, sv := range s.Variants {
		v, err := newVariant(sv, nworkers)
		if err != nil {
			fmt.Fprintf(os.Stderr, "pycni-bench-libcni: %v\n", err)
			os.Exit(2)
		}
		vs = append(vs, v)
	}
	ctx := context.Background()
	if s.Timeout > 0 {
		opTimeout = time.Duration(s.Timeout * float64(time.Second))
	}
	rng := rand.New(rand.NewSource(s.Seed))
	switch {
	case s.Mode == "version":
		runVersion(ctx, &s, vs, rng)
	case s.Mode == "ops":
		runOps(ctx, &s, vs, rng)
	case s.Mode == "pods" && s.Parallel <= 1:
		runPodsSerial(ctx, &s, vs, rng)
	case s.Mode == "pods":
		runPodsParallel(ctx, &s, vs, rng)
	default:
		fmt.Fprintf(os.Stderr, "pycni-bench-libcni: unknown mode %q\n", s.Mode)
		os.Exit(2)
	}
	out := map[string]*variantOut{}
	for _, v := range vs {
		out[v.spec.Name] = v.out
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"variants": out}); err != nil {
		os.Exit(1)
	}
}
