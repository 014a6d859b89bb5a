/*
 * corral-jail: starts one qemu in a jail of its own, then gets out of the way.
 *
 *   corral-jail --uid U --gid G [--group GID] [--bind PATH | --ro-bind PATH | --sys PATH | --dev PATH
 *               | --file-at SRC DST | --symlink TARGET LINK | --cgroup PROCS_FILE
 *               | --cleanup PATH | --cleanup-cgroup DIR | --netns | --proc | --nofile N | --fsize BYTES | --pid-fd FD | --keep-fd FD
 *               | --setenv NAME=VALUE | --nic FD --slirp4netns PATH --slirp-api SOCKET [--slirp-resolv FILE]]...
 *               -- QEMU ARGS...
 *
 * In order, as root:
 *  1. dies with its parent, the sandbox worker thread that spawned it (PR_SET_PDEATHSIG:
 *     SIGTERM, on which it kills qemu, waits for it, removes the --cleanup paths and exits);
 *  2. joins each v1 cgroup given (its cgroup.procs file: this one-thread process moves itself
 *     through the `tasks` file beside it, which spares every VM start an RCU grace period);
 *     a v2 one is joined by qemu's process alone, created in it (clone3, CLONE_INTO_CGROUP);
 *  3. unshares the PID namespace and forks: the child is PID 1 of the new one, unshares the
 *     mount, IPC, UTS and cgroup namespaces, and the network namespace with --netns (a new
 *     one holds only a loopback device that is down: no network at all), and becomes qemu;
 *     with --nic (which implies --netns), that namespace gets the VM's NIC (setup_nic): a
 *     bridge joining a tap that qemu holds (as fd FD: `-netdev tap,fd=FD`) and a tap that
 *     slirp4netns holds, started by this process (run_slirp) once the namespace is there;
 *  4. this process stays in the host's namespaces as qemu's reaper, reports the child's pid
 *     (as the host sees it) on --pid-fd (with --nic, then a line "net" once slirp4netns is ready),
 *     forwards SIGTERM/SIGINT/SIGHUP, and once qemu is gone removes the --cleanup paths (a
 *     file, or a directory of files) and, if its owner died, the --cleanup-cgroup dirs
 *     (leaving each for its parent first), and exits the way qemu did (same code, signal);
 *  5. the child builds a new root on a tmpfs holding only what it was given: --bind (read-
 *     write) and --ro-bind paths at the same absolute path, as idmapped mounts that show the
 *     path's owner as U/G (so U may use them, and what U creates is owned by that owner on
 *     the host; nothing is chowned), --sys paths read-only as they are (the qemu binary's
 *     /usr), --dev device nodes, --file-at (a file under another name, read-only),
 *     --symlink, and with --proc a /proc showing only its own PID namespace's processes
 *     (`subset=pid`: no /proc/sys, /proc/meminfo…); pivots into it, detaches the old root and makes the new one read-only;
 *  6. sets rlimits (open files, file size, no core dumps), drops every capability
 *     (bounding, ambient, inheritable), sets no_new_privs, switches to U/G with no
 *     supplementary groups but --group (the owner group of /dev/kvm, under KVM) (which clears the permitted and effective sets), closes every
 *     other fd but --keep-fd ones, adds the --setenv variables to its environment (the RAM
 *     file shim's, src/vm/jail.ts), and execs qemu.
 *
 * Any failure before the exec prints "corral-jail: <step>: <error>" on stderr and exits
 * 125 without running qemu.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define JAIL_ROOT "/run/corral-jail"
#define MAX_ITEMS 128
#define EXIT_JAIL 125

/* The kernel ABI this needs, spelled out: musl's headers carry no linux/ directory. */
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#define MOUNT_ATTR_NOEXEC 0x00000008
#define MOUNT_ATTR_IDMAP 0x00100000
struct mount_attr {
  uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#define LINUX_CAPABILITY_VERSION_3 0x20080522
struct cap_header { uint32_t version; int pid; };
struct cap_data { uint32_t effective, permitted, inheritable; };
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* tun/tap and bridge ioctls, spelled out for the same reason. */
#define TUN_SETIFF 0x400454caUL
#define TUN_SETPERSIST 0x400454cbUL
#define TUN_IFF_TAP 0x0002
#define TUN_IFF_NO_PI 0x1000
#define SIOC_BRADDBR 0x89a0
#define SIOC_BRADDIF 0x89a2
/* The VM's NIC inside its network namespace: qemu's tap and slirp4netns's, on one bridge. */
#define NIC_BRIDGE "br0"
#define NIC_VM_TAP "vm0"
#define NIC_SLIRP_TAP "slirp0"

enum kind { BIND_RW, BIND_RO, SYS_RO, DEV, FILE_AT, SYMLINK };

struct item {
  enum kind kind;
  const char *src;
  const char *dst;
  int userns; /* the idmap of a --bind / --ro-bind */
};

static struct item items[MAX_ITEMS];
static int nitems;
static const char *cgroups[8];
static int ncgroups;
static int keep_fds[8];
static int nkeep;
static int with_proc;
static const char *cleanups[8];
static int ncleanups;
static const char *cgroup_dirs[8];
static int ncgroup_dirs;
static pid_t owner;
static long extra_group = -1;

static void die(const char *step, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  dprintf(2, "corral-jail: %s: %s\n", step, msg);
  _exit(EXIT_JAIL);
}

static void usage(const char *why) { die("usage", "%s", why); }

static long number(const char *s, const char *opt) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < 0 || v > LONG_MAX) die("usage", "%s needs a non-negative integer, got \"%s\"", opt, s);
  return (long)v;
}

static void add(enum kind kind, const char *src, const char *dst) {
  if (nitems == MAX_ITEMS) usage("too many paths");
  if (dst[0] != '/') die("usage", "\"%s\" is not an absolute path", dst);
  items[nitems++] = (struct item){kind, src, dst, -1};
}

/* Whether `rel` exists under the new root (inside a bind mounted there already, it may). */
static int exists_at(int root, const char *rel) {
  struct stat st;
  return fstatat(root, rel, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* mkdir -p of every parent of `path` (relative to the new root's fd). */
static void make_parents(int root, const char *path) {
  char buf[PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", path + 1) >= (int)sizeof buf) die("new root", "path too long: %s", path);
  for (char *p = buf; (p = strchr(p, '/')); p++) {
    *p = 0;
    if (!exists_at(root, buf) && mkdirat(root, buf, 0755) < 0 && errno != EEXIST) die("new root", "mkdir %s: %s", buf, strerror(errno));
    *p = '/';
  }
}

/* The mount point for `src` at `dst`: an empty file or directory of the same kind. */
static void make_target(int root, const char *src, const char *dst) {
  struct stat st;
  if (stat(src, &st) < 0) die("new root", "%s: %s", src, strerror(errno));
  make_parents(root, dst);
  if (exists_at(root, dst + 1)) return; /* inside another bind: the path is there already */
  if (S_ISDIR(st.st_mode)) {
    if (mkdirat(root, dst + 1, 0755) < 0 && errno != EEXIST) die("new root", "mkdir %s: %s", dst, strerror(errno));
  } else {
    int fd = openat(root, dst + 1, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) die("new root", "create %s: %s", dst, strerror(errno));
    close(fd);
  }
}

/*
 * A user namespace whose only mapping is `owner` (uid and gid) → the jail's U/G: the idmap
 * of the bind mounts of paths with that owner. Made by a child that unshares and waits; its
 * namespace outlives it through the returned fd.
 */
static int idmap_userns(uid_t owner_uid, gid_t owner_gid, uid_t uid, gid_t gid) {
  int ready[2], done[2];
  if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(done, O_CLOEXEC) < 0) die("idmap", "pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) die("idmap", "fork: %s", strerror(errno));
  if (pid == 0) {
    char c = 0;
    close(ready[0]);
    close(done[1]);
    if (unshare(CLONE_NEWUSER) < 0) _exit(1);
    if (write(ready[1], &c, 1) != 1) _exit(1);
    if (read(done[0], &c, 1) < 0) _exit(1);
    _exit(0);
  }
  char c;
  close(ready[1]);
  if (read(ready[0], &c, 1) != 1) die("idmap", "user namespaces are not available (unshare(CLONE_NEWUSER) failed)");
  char path[64], map[64];
  struct { const char *file; unsigned long inside, outside; } maps[] = {
    {"uid_map", owner_uid, uid},
    {"gid_map", owner_gid, gid},
  };
  for (int i = 0; i < 2; i++) {
    snprintf(path, sizeof path, "/proc/%d/%s", pid, maps[i].file);
    int n = snprintf(map, sizeof map, "%lu %lu 1\n", maps[i].inside, maps[i].outside);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, map, n) != n) die("idmap", "writing %s: %s", path, strerror(errno));
    close(fd);
  }
  snprintf(path, sizeof path, "/proc/%d/ns/user", pid);
  int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0) die("idmap", "%s: %s", path, strerror(errno));
  close(done[1]);
  waitpid(pid, NULL, 0);
  close(ready[0]);
  close(done[0]);
  return ns;
}

static struct { uid_t uid; gid_t gid; int fd; } userns_cache[16];
static int nuserns;

static int userns_for(const struct stat *st, uid_t uid, gid_t gid) {
  for (int i = 0; i < nuserns; i++)
    if (userns_cache[i].uid == st->st_uid && userns_cache[i].gid == st->st_gid) return userns_cache[i].fd;
  if (nuserns == 16) die("idmap", "too many distinct owners");
  int fd = idmap_userns(st->st_uid, st->st_gid, uid, gid);
  userns_cache[nuserns++] = (typeof(userns_cache[0])){st->st_uid, st->st_gid, fd};
  return fd;
}

/* Bind `src` at `dst` under the new root as an idmapped mount: its owner appears as U/G. */
static void bind_idmapped(int root, const char *src, const char *dst, int readonly, int userns) {
  int tree = (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (tree < 0) die("bind", "open_tree %s: %s", src, strerror(errno));
  struct mount_attr attr = {
      .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC | (readonly ? MOUNT_ATTR_RDONLY : 0),
      .userns_fd = (uint64_t)userns,
  };
  if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0)
    die("bind", "idmapped mount of %s: %s", src, strerror(errno));
  make_target(root, src, dst);
  if (syscall(SYS_move_mount, tree, "", root, dst + 1, MOVE_MOUNT_F_EMPTY_PATH) < 0)
    die("bind", "move_mount %s: %s", dst, strerror(errno));
  close(tree);
}

/* A plain bind mount of `src` at `dst`, read-only unless it is a device node. */
static void bind_plain(const char *newroot, int root, const char *src, const char *dst, int device) {
  char target[PATH_MAX];
  make_target(root, src, dst);
  snprintf(target, sizeof target, "%s%s", newroot, dst);
  if (mount(src, target, NULL, MS_BIND | MS_REC, NULL) < 0) die("bind", "%s: %s", src, strerror(errno));
  unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (device ? MS_NOEXEC : MS_RDONLY | MS_NODEV);
  if (mount(NULL, target, NULL, flags, NULL) < 0) die("bind", "remount %s: %s", dst, strerror(errno));
}

static void build_root(void) {
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("mounts", "making / private: %s", strerror(errno));
  if (mkdir(JAIL_ROOT, 0700) < 0 && errno != EEXIST) die("mounts", "mkdir %s: %s", JAIL_ROOT, strerror(errno));
  if (mount("corral-jail", JAIL_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k,nr_inodes=4096") < 0)
    die("mounts", "tmpfs at %s: %s", JAIL_ROOT, strerror(errno));
  int root = open(JAIL_ROOT, O_DIRECTORY | O_PATH | O_CLOEXEC);
  if (root < 0) die("mounts", "%s: %s", JAIL_ROOT, strerror(errno));
  for (int i = 0; i < nitems; i++) {
    struct item *it = &items[i];
    switch (it->kind) {
      case BIND_RW: bind_idmapped(root, it->src, it->dst, 0, it->userns); break;
      case BIND_RO: bind_idmapped(root, it->src, it->dst, 1, it->userns); break;
      case SYS_RO: case FILE_AT: bind_plain(JAIL_ROOT, root, it->src, it->dst, 0); break;
      case DEV: bind_plain(JAIL_ROOT, root, it->src, it->dst, 1); break;
      case SYMLINK:
        make_parents(root, it->dst);
        if (symlinkat(it->src, root, it->dst + 1) < 0) die("new root", "symlink %s: %s", it->dst, strerror(errno));
        break;
    }
  }
  if (with_proc) {
    /* Its own PID namespace's processes only (itself), and nothing else of /proc: qemu's 9p
     * server reaches files through /proc/self/fd. */
    make_parents(root, "/proc/x");
    if (mount("proc", JAIL_ROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid,hidepid=invisible") < 0)
      die("mounts", "proc: %s", strerror(errno));
  }
  for (int i = 0; i < nuserns; i++) close(userns_cache[i].fd);
  close(root);
  if (chdir(JAIL_ROOT) < 0) die("pivot", "chdir: %s", strerror(errno));
  /* pivot_root(".", "."): the old root ends up on top of the new one and is detached. */
  if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot", "pivot_root: %s", strerror(errno));
  if (umount2(".", MNT_DETACH) < 0) die("pivot", "detaching the old root: %s", strerror(errno));
  if (chdir("/") < 0) die("pivot", "chdir /: %s", strerror(errno));
  if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
    die("pivot", "making the new root read-only: %s", strerror(errno));
}

static void drop_privileges(uid_t uid, gid_t gid, long nofile, long fsize) {
  struct rlimit lim = {(rlim_t)nofile, (rlim_t)nofile};
  if (nofile && setrlimit(RLIMIT_NOFILE, &lim) < 0) die("rlimits", "RLIMIT_NOFILE: %s", strerror(errno));
  lim = (struct rlimit){(rlim_t)fsize, (rlim_t)fsize};
  if (fsize && setrlimit(RLIMIT_FSIZE, &lim) < 0) die("rlimits", "RLIMIT_FSIZE: %s", strerror(errno));
  lim = (struct rlimit){0, 0};
  if (setrlimit(RLIMIT_CORE, &lim) < 0) die("rlimits", "RLIMIT_CORE: %s", strerror(errno));
  for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) die("capabilities", "dropping %d from the bounding set: %s", cap, strerror(errno));
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
    die("capabilities", "clearing the ambient set: %s", strerror(errno));
  /* No supplementary group but --group (the one that may open /dev/kvm). */
  gid_t group = (gid_t)extra_group;
  if (setgroups(extra_group >= 0 ? 1 : 0, extra_group >= 0 ? &group : NULL) < 0) die("credentials", "setgroups: %s", strerror(errno));
  if (setresgid(gid, gid, gid) < 0) die("credentials", "setresgid %u: %s", gid, strerror(errno));
  if (setresuid(uid, uid, uid) < 0) die("credentials", "setresuid %u: %s", uid, strerror(errno));
  /* Leaving uid 0 cleared the permitted and effective sets; the inheritable one too. */
  struct cap_header hdr = {LINUX_CAPABILITY_VERSION_3, 0};
  struct cap_data data[2] = {{0, 0, 0}, {0, 0, 0}};
  if (syscall(SYS_capset, &hdr, data) < 0) die("capabilities", "capset: %s", strerror(errno));
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("no_new_privs", "%s", strerror(errno));
}

static const char *slirp_bin, *slirp_api, *slirp_resolv;

static void set_flags_up(int s, const char *name) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("nic", "%s: reading its flags: %s", name, strerror(errno));
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("nic", "%s: bringing it up: %s", name, strerror(errno));
}

/* A tap device of this network namespace: its fd, or -1 once made persistent (a later opener attaches). */
static int make_tap(const char *name, int persist) {
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) die("nic", "/dev/net/tun: %s", strerror(errno));
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  /* No IFF_VNET_HDR: the NIC offers the guest the features it had on qemu's own user
   * networking, so that snapshots and templates restore whichever backend a VM has. */
  ifr.ifr_flags = TUN_IFF_TAP | TUN_IFF_NO_PI;
  if (ioctl(fd, TUN_SETIFF, &ifr) < 0) die("nic", "tap %s: %s", name, strerror(errno));
  if (!persist) return fd;
  if (ioctl(fd, TUN_SETPERSIST, 1) < 0) die("nic", "tap %s: making it persistent: %s", name, strerror(errno));
  close(fd);
  return -1;
}

static void bridge_port(int s, const char *port) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", port);
  if (ioctl(s, SIOCGIFINDEX, &ifr) < 0) die("nic", "%s: %s", port, strerror(errno));
  int index = ifr.ifr_ifindex;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", NIC_BRIDGE);
  ifr.ifr_ifindex = index;
  if (ioctl(s, SIOC_BRADDIF, &ifr) < 0) die("nic", "adding %s to %s: %s", port, NIC_BRIDGE, strerror(errno));
}

/*
 * The VM's NIC, in the new network namespace (as root, before the new root hides /dev and
 * /proc): the guest's frames go from qemu's tap through a bridge to the tap slirp4netns
 * attaches to, whose sockets are in the host's namespace, in the network policy's cgroup.
 * Nothing in this namespace routes anywhere: it has no address but loopback's. IPv6 is off
 * (the guest's NIC is IPv4 only). Returns qemu's tap.
 */
static int setup_nic(void) {
  static const char *v6[] = {"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"};
  for (int k = 0; k < 2; k++) {
    int fd = open(v6[k], O_WRONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) continue; /* a kernel without IPv6 */
    if (fd < 0 || write(fd, "1\n", 2) != 2) die("nic", "turning IPv6 off (%s): %s", v6[k], strerror(errno));
    close(fd);
  }
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("nic", "socket: %s", strerror(errno));
  set_flags_up(s, "lo");
  if (ioctl(s, SIOC_BRADDBR, NIC_BRIDGE) < 0) die("nic", "bridge %s: %s (the kernel's bridge support)", NIC_BRIDGE, strerror(errno));
  make_tap(NIC_SLIRP_TAP, 1);
  int tap = make_tap(NIC_VM_TAP, 0);
  bridge_port(s, NIC_SLIRP_TAP);
  bridge_port(s, NIC_VM_TAP);
  set_flags_up(s, NIC_SLIRP_TAP);
  set_flags_up(s, NIC_VM_TAP);
  set_flags_up(s, NIC_BRIDGE);
  close(s);
  return tap;
}

/*
 * The helper: slirp4netns on the NIC's other tap, in the host's network namespace (and in
 * the cgroup the policy's nftables table matches). It runs in a mount namespace of its own
 * whose mounts are all private: its --enable-sandbox detaches the old root, which on shared
 * mounts (/run/netns, say) would propagate back to the host's. Its own sandbox then drops
 * every capability but CAP_NET_BIND_SERVICE and pivots into an empty root; its seccomp
 * filter is on. It writes "1" on `ready` once it holds its tap, and dies with qemu's PID
 * namespace.
 */
static void run_slirp(pid_t vm, int ready, const sigset_t *mask) {
  sigprocmask(SIG_SETMASK, mask, NULL);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) die("network", "pdeathsig: %s", strerror(errno));
  if (unshare(CLONE_NEWNS) < 0) die("network", "unshare(CLONE_NEWNS): %s", strerror(errno));
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("network", "making / private: %s", strerror(errno));
  if (slirp_resolv && mount(slirp_resolv, "/etc/resolv.conf", NULL, MS_BIND, NULL) < 0)
    die("network", "%s at /etc/resolv.conf: %s", slirp_resolv, strerror(errno));
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  /* It talks on stderr of every tap fd it passes: not for the VM's console. Its failure to
   * start is said by this launcher, its end while the VM runs too (main). */
  if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) die("network", "/dev/null: %s", strerror(errno));
  if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) die("network", "close_range: %s", strerror(errno));
  if (fcntl(ready, F_SETFD, 0) < 0) die("network", "ready fd: %s", strerror(errno));
  char ns[64], ready_arg[32];
  snprintf(ns, sizeof ns, "/proc/%d/ns/net", (int)vm);
  snprintf(ready_arg, sizeof ready_arg, "--ready-fd=%d", ready);
  char *args[] = {(char *)slirp_bin, "--netns-type=path", "--api-socket", (char *)slirp_api, "--enable-sandbox", "--enable-seccomp", ready_arg, ns, NIC_SLIRP_TAP, NULL};
  execv(slirp_bin, args);
  die("network", "%s: %s", slirp_bin, strerror(errno));
}

static pid_t child;

/* The v2 cgroup was joined by a write, not at the clone (see join_cgroups). */
static int v2_joined;

/* SIGTERM is the parent-death signal (corral itself never sends it): the owner is gone. */
static volatile sig_atomic_t owner_gone;

/* A signal for qemu: passed on; the owner's death kills it. */
static void forward(int sig) {
  if (sig == SIGTERM) owner_gone = 1;
  if (child > 0) kill(child, getppid() != owner ? SIGKILL : sig);
}

/* What qemu used on the host and nobody else removes if the owner died: files, or a dir of files. */
static void clean_up(void) {
  for (int c = 0; c < ncleanups; c++) {
    if (unlink(cleanups[c]) == 0 || errno == ENOENT) continue;
    DIR *d = opendir(cleanups[c]);
    if (!d) continue;
    int fd = dirfd(d);
    for (struct dirent *e; (e = readdir(d));)
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlinkat(fd, e->d_name, 0);
    closedir(d);
    rmdir(cleanups[c]);
  }
  /* The VM's cgroups, if the owner is gone (else it reads them first: an OOM kill), this
   * process leaves each for its parent, then removes it. */
  for (int c = 0; owner_gone && c < ncgroup_dirs; c++) {
    char parent[PATH_MAX];
    /* v1: this thread leaves through `tasks`; v2: only if it joined (else qemu alone was in it). */
    int n = snprintf(parent, sizeof parent, "%s/../tasks", cgroup_dirs[c]);
    if (n < (int)sizeof parent && access(parent, F_OK) < 0)
      n = v2_joined ? snprintf(parent, sizeof parent, "%s/../cgroup.procs", cgroup_dirs[c]) : (int)sizeof parent;
    int fd = n < (int)sizeof parent ? open(parent, O_WRONLY | O_CLOEXEC) : -1;
    if (fd >= 0) {
      if (write(fd, "0\n", 2) != 2) dprintf(2, "corral-jail: cleanup: leaving %s: %s\n", cgroup_dirs[c], strerror(errno));
      close(fd);
    }
    /* A task that just exited may hold it for a moment. */
    for (int i = 0; i < 50 && rmdir(cgroup_dirs[c]) < 0 && errno == EBUSY; i++) usleep(10000);
  }
}

/* Joins a cgroup by writing "0" to its `tasks` (this thread) or `cgroup.procs` (this process) file. */
static void write_self(const char *file) {
  int fd = open(file, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "0\n", 2) != 2) die("cgroup", "joining %s: %s", file, strerror(errno));
  close(fd);
}

/*
 * Moving a whole process between cgroups (a write to cgroup.procs) takes the kernel's global
 * threadgroup lock, whose writer waits for an RCU grace period: ~15 ms here, on every VM's
 * path. A single thread moving itself does not take it. So: in a v1 hierarchy this process
 * (one thread) moves itself through the `tasks` file; a v2 cgroup (no `tasks`) is not joined
 * at all, its child is created in it (clone3 with CLONE_INTO_CGROUP). Returns the v2 dir's fd
 * for that, or -1. A second v2 cgroup, or a kernel without clone3, is joined the old way.
 */
static int join_cgroups(void) {
  int v2_dir = -1;
  for (int c = 0; c < ncgroups; c++) {
    char dir[PATH_MAX], tasks[PATH_MAX + 8];
    const char *slash = strrchr(cgroups[c], '/');
    if (!slash || strcmp(slash, "/cgroup.procs") || slash - cgroups[c] >= (long)sizeof dir) {
      write_self(cgroups[c]);
      continue;
    }
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - cgroups[c]), cgroups[c]);
    snprintf(tasks, sizeof tasks, "%s/tasks", dir);
    if (access(tasks, F_OK) == 0) write_self(tasks);
    else if (v2_dir < 0 && (v2_dir = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) continue;
    else write_self(cgroups[c]);
  }
  return v2_dir;
}

struct clone_args_v2 {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};
#define CLONE_INTO_CGROUP_FLAG 0x200000000ULL

/* fork(), into the v2 cgroup `v2_dir` when there is one (joined by this process on an old kernel). */
static pid_t fork_into(int v2_dir) {
  if (v2_dir < 0) return fork();
  struct clone_args_v2 args = {.flags = CLONE_INTO_CGROUP_FLAG, .exit_signal = SIGCHLD, .cgroup = (uint64_t)v2_dir};
  long pid = syscall(SYS_clone3, &args, sizeof args);
  if (pid >= 0 || (errno != ENOSYS && errno != E2BIG && errno != EINVAL)) return (pid_t)pid;
  /* An older kernel: join it, then fork. */
  char procs[64];
  snprintf(procs, sizeof procs, "/proc/self/fd/%d/cgroup.procs", v2_dir);
  write_self(procs);
  v2_joined = 1;
  return fork();
}

int main(int argc, char **argv) {
  long uid = -1, gid = -1, nofile = 0, fsize = 0, pid_fd = -1, nic_fd = -1;
  int netns = 0, i = 1;
  const char *envs[8];
  int nenv = 0;
  for (; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--")) { i++; break; }
    if (!strcmp(a, "--netns")) { netns = 1; continue; }
    if (!strcmp(a, "--proc")) { with_proc = 1; continue; }
    if (!v) die("usage", "%s needs a value", a);
    if (!strcmp(a, "--uid")) uid = number(v, a);
    else if (!strcmp(a, "--gid")) gid = number(v, a);
    else if (!strcmp(a, "--nofile")) nofile = number(v, a);
    else if (!strcmp(a, "--fsize")) fsize = number(v, a);
    else if (!strcmp(a, "--pid-fd")) pid_fd = number(v, a);
    else if (!strcmp(a, "--group")) extra_group = number(v, a);
    else if (!strcmp(a, "--nic")) nic_fd = number(v, a);
    else if (!strcmp(a, "--slirp4netns")) slirp_bin = v;
    else if (!strcmp(a, "--slirp-api")) slirp_api = v;
    else if (!strcmp(a, "--slirp-resolv")) slirp_resolv = v;
    else if (!strcmp(a, "--keep-fd")) { if (nkeep == 8) usage("too many --keep-fd"); keep_fds[nkeep++] = (int)number(v, a); }
    else if (!strcmp(a, "--bind")) add(BIND_RW, v, v);
    else if (!strcmp(a, "--ro-bind")) add(BIND_RO, v, v);
    else if (!strcmp(a, "--sys")) add(SYS_RO, v, v);
    else if (!strcmp(a, "--dev")) add(DEV, v, v);
    else if (!strcmp(a, "--cleanup-cgroup")) { if (ncgroup_dirs == 8) usage("too many --cleanup-cgroup"); cgroup_dirs[ncgroup_dirs++] = v; }
    else if (!strcmp(a, "--setenv")) {
      if (nenv == 8) usage("too many --setenv");
      if (!strchr(v, '=') || *v == '=') die("usage", "--setenv needs NAME=VALUE, got \"%s\"", v);
      envs[nenv++] = v;
    } else if (!strcmp(a, "--cleanup")) { if (ncleanups == 8) usage("too many --cleanup"); cleanups[ncleanups++] = v; }
    else if (!strcmp(a, "--cgroup")) { if (ncgroups == 8) usage("too many --cgroup"); cgroups[ncgroups++] = v; }
    else if (!strcmp(a, "--file-at") || !strcmp(a, "--symlink")) {
      if (i + 2 >= argc) die("usage", "%s needs two values", a);
      add(!strcmp(a, "--file-at") ? FILE_AT : SYMLINK, v, argv[i + 2]);
      i++;
    } else die("usage", "unknown option %s", a);
    i++;
  }
  if (i >= argc) usage("no command after --");
  if (uid <= 0 || gid <= 0) usage("--uid and --gid must be given and not 0");
  if (argv[i][0] != '/') die("usage", "the command must be an absolute path, got \"%s\"", argv[i]);
  if (nic_fd >= 0) {
    if (!slirp_bin || !slirp_api) usage("--nic needs --slirp4netns and --slirp-api");
    if (slirp_bin[0] != '/') die("usage", "--slirp4netns must be an absolute path, got \"%s\"", slirp_bin);
    if (nic_fd < 3 || nic_fd == pid_fd) die("usage", "--nic needs an fd above 2 that no other option uses, got %ld", nic_fd);
    for (int k = 0; k < nkeep; k++) if (keep_fds[k] == nic_fd) die("usage", "--nic %ld is also a --keep-fd", nic_fd);
    netns = 1;
  } else if (slirp_bin || slirp_api || slirp_resolv) usage("--slirp4netns, --slirp-api and --slirp-resolv go with --nic");

  /* SIGTERM, not SIGKILL: this process outlives its owner just long enough to kill qemu,
   * wait for it and remove what it leaves (--cleanup). */
  owner = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) < 0) die("pdeathsig", "%s", strerror(errno));
  if (getppid() != owner) _exit(EXIT_JAIL); /* the owner died before the prctl */

  int v2_dir = join_cgroups();

  /* The idmaps' user namespaces are made here, while /proc is still this PID namespace's. */
  for (int k = 0; k < nitems; k++) {
    if (items[k].kind != BIND_RW && items[k].kind != BIND_RO) continue;
    struct stat st;
    if (stat(items[k].src, &st) < 0) die("bind", "%s: %s", items[k].src, strerror(errno));
    items[k].userns = userns_for(&st, (uid_t)uid, (gid_t)gid);
  }

  /* The PID namespace takes effect for the child; the others are the child's alone (this
   * process stays in the host's mounts, to remove the --cleanup paths). */
  if (unshare(CLONE_NEWPID) < 0) die("namespaces", "unshare(CLONE_NEWPID): %s", strerror(errno));

  /* Signals that arrive before the child exists wait until the handler is in place. */
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  int alive[2]; /* the child sees EOF on it once this process is gone */
  if (pipe2(alive, O_CLOEXEC) < 0) die("fork", "pipe: %s", strerror(errno));
  int nic_ready[2] = {-1, -1}; /* the child writes a byte once its NIC is there */
  if (nic_fd >= 0 && pipe2(nic_ready, O_CLOEXEC) < 0) die("fork", "pipe: %s", strerror(errno));
  child = fork_into(v2_dir);
  if (child < 0) die("fork", "%s", strerror(errno));
  if (child == 0) {
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) die("pdeathsig", "%s", strerror(errno));
    /* getppid() is 0 in a new PID namespace: ask the pipe whether the reaper died before the prctl. */
    close(alive[1]);
    struct pollfd pfd = {alive[0], POLLIN, 0};
    if (poll(&pfd, 1, 0) != 0) _exit(EXIT_JAIL);
    if (pid_fd >= 0) close((int)pid_fd);
    int flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP | (netns ? CLONE_NEWNET : 0);
    if (unshare(flags) < 0) die("namespaces", "unshare: %s", strerror(errno));
    int tap = -1;
    if (nic_fd >= 0) {
      tap = setup_nic();
      close(nic_ready[0]);
      if (write(nic_ready[1], "n", 1) != 1) die("nic", "telling the launcher: %s", strerror(errno));
      close(nic_ready[1]);
    }
    build_root();
    drop_privileges((uid_t)uid, (gid_t)gid, nofile, fsize);
    /* Changing credentials cleared the parent-death signal: set it again, and check again. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) die("pdeathsig", "%s", strerror(errno));
    if (poll(&pfd, 1, 0) != 0) _exit(EXIT_JAIL);
    close(alive[0]);
    /* qemu's tap at the fd its -netdev names (nothing else is open above 2 but the kept ones). */
    if (tap >= 0 && tap != nic_fd) {
      if (dup2(tap, (int)nic_fd) < 0) die("fds", "tap at fd %ld: %s", nic_fd, strerror(errno));
      close(tap);
    }
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) die("fds", "close_range: %s", strerror(errno));
    for (int k = 0; k < nkeep; k++)
      if (fcntl(keep_fds[k], F_SETFD, 0) < 0) die("fds", "keeping fd %d: %s", keep_fds[k], strerror(errno));
    if (tap >= 0 && fcntl((int)nic_fd, F_SETFD, 0) < 0) die("fds", "keeping the tap: %s", strerror(errno));
    for (int k = 0; k < nenv; k++)
      if (putenv((char *)envs[k]) != 0) die("env", "%s: %s", envs[k], strerror(errno));
    execv(argv[i], argv + i);
    die("exec", "%s: %s", argv[i], strerror(errno));
  }
  struct sigaction sa = {0};
  sa.sa_handler = forward;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  /* The pid now; with --nic a line "net" follows once slirp4netns is ready (qemu starts
   * meanwhile), and the fd closes without it if slirp4netns could not start. */
  if (pid_fd >= 0) dprintf((int)pid_fd, "%d\n", child);
  pid_t helper = -1;
  if (nic_fd >= 0) {
    /* Signals stay blocked until slirp4netns is there: the helper must not miss being killed. */
    close(nic_ready[1]);
    char c;
    ssize_t got;
    while ((got = read(nic_ready[0], &c, 1)) < 0 && errno == EINTR) {}
    close(nic_ready[0]);
    if (got != 1) {
      kill(child, SIGKILL);
      waitpid(child, NULL, 0);
      clean_up();
      die("nic", "the VM process ended before its network namespace was set up");
    }
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) < 0) die("network", "pipe: %s", strerror(errno));
    helper = fork_into(v2_dir);
    if (helper < 0) die("network", "fork: %s", strerror(errno));
    if (helper == 0) run_slirp(child, ready[1], &old);
    close(ready[1]);
    while ((got = read(ready[0], &c, 1)) < 0 && errno == EINTR) {}
    close(ready[0]);
    if (got != 1) {
      kill(child, SIGKILL);
      kill(helper, SIGKILL);
      while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {}
      clean_up();
      die("network", "slirp4netns did not start (%s)", slirp_bin);
    }
  }
  if (v2_dir >= 0) close(v2_dir);
  sigprocmask(SIG_SETMASK, &old, NULL);
  if (pid_fd >= 0) {
    if (nic_fd >= 0) dprintf((int)pid_fd, "net\n");
    close((int)pid_fd);
  }
  for (int k = 0; k < nkeep; k++) close(keep_fds[k]);
  /* The owner may have died while the signals were blocked. */
  if (getppid() != owner) kill(child, SIGKILL);
  /* qemu's end, and the helper's: qemu is PID 1 of the namespace the helper is in, and its
   * exit waits until this process has reaped the helper the kernel kills then. */
  int status = 0;
  for (;;) {
    int st;
    pid_t p = waitpid(-1, &st, 0);
    if (p < 0 && errno == EINTR) continue;
    if (p < 0) break; /* ECHILD: both reaped */
    if (p == child) status = st, child = -1;
    else if (p == helper) {
      /* SIGKILL is how it ends with qemu's namespace (whose exit waits for this reaping). */
      if (child > 0 && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)) dprintf(2, "corral-jail: network: slirp4netns ended (%s %d) while the VM ran: it has no network now\n", WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
      helper = -1;
    }
  }
  clean_up();
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  int sig = WTERMSIG(status);
  signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  sigprocmask(SIG_UNBLOCK, &one, NULL);
  kill(getpid(), sig);
  return 128 + sig;
}
