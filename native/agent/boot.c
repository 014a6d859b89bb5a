/*
 * PID 1 system bring-up: pseudo filesystems, root assembly from /proc/cmdline
 * (erofs lowers + ext4/tmpfs upper → overlayfs → switch_root, or a disk image as the root
 * directly), hostname, loopback, and
 * discovery of the virtio-serial port. Also the final power-off.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* What we take from /proc/cmdline. Empty string = not given. */
struct cmdline {
	char lower[512]; /* comma-separated, topmost layer first */
	char lowerfs[32];
	char upper[256];
	char root[256]; /* a disk image root: mounted read-write as /, no overlay */
	char rootfs[32];
	char hostname[65];
};

/* Where the initramfs of a modular kernel keeps the modules to load (load_modules). */
#define MODULES_DIR "/modules"

/* Most lower layers (each is a virtio-blk device; microvm has few virtio-mmio slots). */
#define MAX_LOWERS 24

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
	}
}

static bool is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* mkdir that treats "already there" as success. */
static int ensure_dir(const char *path, mode_t mode)
{
	if (mkdir(path, mode) == 0 || errno == EEXIST)
		return 0;
	logmsg("mkdir %s: %s", path, strerror(errno));
	return -1;
}

/* mount() that logs failures and treats EBUSY (already mounted) as success. */
static int do_mount(const char *src, const char *dst, const char *fs, unsigned long flags,
		    const char *data)
{
	if (mount(src, dst, fs, flags, data) == 0 || errno == EBUSY)
		return 0;
	logmsg("mount %s on %s (%s): %s", src, dst, fs ? fs : "-", strerror(errno));
	return -1;
}

/* Copies a cmdline value into dst if it fits; oversized values are ignored (and logged). */
static void take_value(char *dst, size_t cap, const char *key, const char *val, size_t len)
{
	if (len == 0 || len >= cap) {
		logmsg("ignoring bad %s= on the kernel command line", key);
		return;
	}
	memcpy(dst, val, len);
	dst[len] = '\0';
}

static void parse_cmdline(struct cmdline *c)
{
	static const struct {
		const char *key;
		size_t off, cap;
	} keys[] = {
		{ "corral.lower=", offsetof(struct cmdline, lower), sizeof c->lower },
		{ "corral.lowerfs=", offsetof(struct cmdline, lowerfs), sizeof c->lowerfs },
		{ "corral.upper=", offsetof(struct cmdline, upper), sizeof c->upper },
		{ "corral.root=", offsetof(struct cmdline, root), sizeof c->root },
		{ "corral.rootfs=", offsetof(struct cmdline, rootfs), sizeof c->rootfs },
		{ "corral.hostname=", offsetof(struct cmdline, hostname), sizeof c->hostname },
	};
	char buf[4096];
	memset(c, 0, sizeof *c);
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		logmsg("open /proc/cmdline: %s", strerror(errno));
		return;
	}
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';

	for (char *tok = buf; *tok;) {
		tok += strspn(tok, " \t\n");
		size_t len = strcspn(tok, " \t\n");
		for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
			size_t kl = strlen(keys[k].key);
			if (len > kl && strncmp(tok, keys[k].key, kl) == 0)
				take_value((char *)c + keys[k].off, keys[k].cap, keys[k].key, tok + kl,
					   len - kl);
		}
		tok += len;
	}
	if (!c->lowerfs[0])
		strcpy(c->lowerfs, "erofs");
	if (!c->rootfs[0])
		strcpy(c->rootfs, "auto");
}

/* Block devices are normally probed before init runs, but give a slow one a moment. */
static int wait_for_path(const char *path, int timeout_ms)
{
	for (int waited = 0; access(path, F_OK) != 0; waited += 10) {
		if (waited >= timeout_ms) {
			logmsg("%s did not appear", path);
			return -1;
		}
		sleep_ms(10);
	}
	return 0;
}

static void mount_pseudo_filesystems(void)
{
	ensure_dir("/proc", 0555);
	ensure_dir("/sys", 0555);
	ensure_dir("/dev", 0755);
	do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
}

/* A kernel with its drivers as modules (Debian's packaged kernel, see scripts/setup.sh) gets
 * them in the initramfs as /modules/NN-name.ko, numbered in dependency order; each is loaded
 * and then unlinked, which gives its pages back (the initramfs stays in RAM for the guest's
 * life). The custom kernel has everything built in and its initramfs has no /modules. */
static int name_cmp(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static void load_modules(void)
{
	struct dirent **names;
	int n = scandir(MODULES_DIR, &names, NULL, name_cmp);
	if (n < 0) {
		if (errno != ENOENT)
			logmsg("scandir %s: %s", MODULES_DIR, strerror(errno));
		return;
	}
	for (int i = 0; i < n; i++) {
		const char *name = names[i]->d_name;
		size_t len = strlen(name);
		if (len > 3 && strcmp(name + len - 3, ".ko") == 0) {
			char path[300];
			snprintf(path, sizeof path, "%s/%s", MODULES_DIR, name);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0) {
				logmsg("open %s: %s", path, strerror(errno));
			} else {
				/* EEXIST: built in, or loaded already as another's dependency. */
				if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
					logmsg("finit_module %s: %s", name, strerror(errno));
				close(fd);
			}
			if (unlink(path) < 0)
				logmsg("unlink %s: %s", path, strerror(errno));
		}
		free(names[i]);
	}
	free(names);
}

/* Moves /dev /proc /sys into the new root at /mnt/root and makes it the root (what busybox
 * switch_root does, minus deleting the initramfs: ours holds only this binary). */
static int switch_into(void)
{
	static const char *const moved[] = { "dev", "proc", "sys" };
	for (size_t i = 0; i < 3; i++) {
		char src[16], dst[32];
		snprintf(src, sizeof src, "/%s", moved[i]);
		snprintf(dst, sizeof dst, "/mnt/root/%s", moved[i]);
		if (ensure_dir(dst, 0755) || do_mount(src, dst, NULL, MS_MOVE, NULL))
			return -1;
	}
	if (chdir("/mnt/root") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 ||
	    chroot(".") < 0 || chdir("/") < 0) {
		logmsg("switching root: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* A disk image root: mounted read-write at /mnt/root. rootfs "auto" tries the block
 * filesystems the kernel has (from /proc/filesystems). */
static int mount_disk_root(const struct cmdline *c)
{
	if (wait_for_path(c->root, 5000))
		return -1;
	if (strcmp(c->rootfs, "auto") != 0)
		return do_mount(c->root, "/mnt/root", c->rootfs, MS_NOATIME, NULL);
	char buf[2048];
	int fd = open("/proc/filesystems", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
	if (fd >= 0)
		close(fd);
	if (n <= 0) {
		logmsg("cannot read /proc/filesystems to probe %s", c->root);
		return -1;
	}
	buf[n] = '\0';
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		if (strncmp(line, "nodev", 5) == 0)
			continue;
		line += strspn(line, " \t");
		if (mount(c->root, "/mnt/root", line, MS_NOATIME, NULL) == 0)
			return 0;
	}
	logmsg("could not mount %s with any known filesystem", c->root);
	return -1;
}

/* Mounts each lower (ro) at /mnt/lower/N and the upper, overlays them on /mnt/root. */
static int mount_overlay_root(const struct cmdline *c)
{
	if (ensure_dir("/mnt/lower", 0755) || ensure_dir("/mnt/upper", 0755))
		return -1;
	char devs[sizeof c->lower];
	char opts[sizeof c->lower + MAX_LOWERS * 16 + 128] = "lowerdir=";
	int n = 0;
	strcpy(devs, c->lower);
	for (char *save = NULL, *dev = strtok_r(devs, ",", &save); dev; dev = strtok_r(NULL, ",", &save)) {
		char dir[32];
		if (n == MAX_LOWERS) {
			logmsg("more than %d lower layers", MAX_LOWERS);
			return -1;
		}
		snprintf(dir, sizeof dir, "/mnt/lower/%d", n);
		if (ensure_dir(dir, 0755) || wait_for_path(dev, 5000) ||
		    do_mount(dev, dir, c->lowerfs, MS_RDONLY, NULL))
			return -1;
		if (n++ > 0)
			strcat(opts, ":");
		strcat(opts, dir);
	}
	if (c->upper[0]) {
		if (wait_for_path(c->upper, 5000) ||
		    do_mount(c->upper, "/mnt/upper", "ext4", MS_NOATIME, NULL))
			return -1;
	} else if (do_mount("tmpfs", "/mnt/upper", "tmpfs", 0, "mode=0755")) {
		return -1;
	}
	if (ensure_dir("/mnt/upper/upper", 0755) || ensure_dir("/mnt/upper/work", 0755))
		return -1;
	strcat(opts, ",upperdir=/mnt/upper/upper,workdir=/mnt/upper/work");
	return do_mount("overlay", "/mnt/root", "overlay", 0, opts);
}

static int assemble_root(const struct cmdline *c)
{
	if (ensure_dir("/mnt", 0755) || ensure_dir("/mnt/root", 0755))
		return -1;
	if (c->root[0] ? mount_disk_root(c) : mount_overlay_root(c))
		return -1;
	return switch_into();
}

/* The mounts and /dev entries a userland expects and that udev/systemd would provide. */
static void mount_runtime_filesystems(void)
{
	if (ensure_dir("/dev/pts", 0755) == 0)
		do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
			 "ptmxmode=0666,mode=0620,gid=5");
	if (ensure_dir("/dev/shm", 01777) == 0)
		do_mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	if (is_dir("/tmp"))
		do_mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	/* Bash process substitution and friends need these; devtmpfs does not create them. */
	symlink("/proc/self/fd", "/dev/fd");
	symlink("/proc/self/fd/0", "/dev/stdin");
	symlink("/proc/self/fd/1", "/dev/stdout");
	symlink("/proc/self/fd/2", "/dev/stderr");
}

/* Brings lo up; the kernel then assigns 127.0.0.1/8 by itself. */
static void loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		logmsg("socket: %s", strerror(errno));
		return;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
		logmsg("SIOCGIFFLAGS lo: %s", strerror(errno));
	} else {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			logmsg("SIOCSIFFLAGS lo: %s", strerror(errno));
	}
	close(s);
}

int set_hostname(const char *name)
{
	if (sethostname(name, strlen(name)) == 0)
		return 0;
	logmsg("sethostname %s: %s", name, strerror(errno));
	return -1;
}

int boot_system(void)
{
	mount_pseudo_filesystems();
	ensure_std_fds();
	log_use_kmsg();
	load_modules();

	struct cmdline c;
	parse_cmdline(&c);
	if ((c.lower[0] || c.root[0]) && assemble_root(&c) < 0) {
		logmsg("could not assemble the root filesystem from %s", c.root[0] ? c.root : c.lower);
		return -1;
	}
	mount_runtime_filesystems();
	if (c.hostname[0])
		set_hostname(c.hostname);
	loopback_up();
	return 0;
}

/* Returns the sysfs entry name (e.g. "vport0p1") of the port named corral.agent, or -1. */
static int find_port(char *entry, size_t cap)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -1;
	int found = -1;
	struct dirent *e;
	while (found < 0 && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' || strlen(e->d_name) >= cap)
			continue;
		char path[300], name[64];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t n = read(fd, name, sizeof name - 1);
		close(fd);
		if (n <= 0)
			continue;
		name[n] = '\0';
		name[strcspn(name, "\n")] = '\0';
		if (strcmp(name, AGENT_PORT_NAME) == 0) {
			strcpy(entry, e->d_name);
			found = 0;
		}
	}
	closedir(d);
	return found;
}

int open_virtio_port(void)
{
	for (long waited = 0;; ) {
		char entry[64], dev[80];
		if (find_port(entry, sizeof entry) == 0) {
			snprintf(dev, sizeof dev, "/dev/%s", entry);
			int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
			if (fd >= 0) {
				char target[80];
				snprintf(target, sizeof target, "../%s", entry);
				ensure_dir("/dev/virtio-ports", 0755);
				symlink(target, "/dev/virtio-ports/" AGENT_PORT_NAME);
				return fd;
			}
			if (waited % 1000 == 0)
				logmsg("open %s: %s", dev, strerror(errno));
		}
		/* Poll fast at first (the port usually shows up within milliseconds), then
		 * slowly: PID 1 may not exit, and the host will time out on HELLO anyway. */
		long step = waited < 5000 ? 10 : 1000;
		if (waited == 2000 || (waited >= 5000 && waited % 30000 == 0))
			logmsg("still waiting for virtio port %s", AGENT_PORT_NAME);
		sleep_ms(step);
		waited += step;
	}
}

void system_shutdown(void)
{
	/* A reset, not RB_POWER_OFF: the guest kernel has no ACPI, so a power-off would only
	 * halt the CPU and leave qemu running; qemu runs with -no-reboot, so a reset (reboot=t:
	 * triple fault) makes it exit. */
	system_end(RB_AUTOBOOT);
}

void system_end(int how)
{
	kill(-1, SIGKILL); /* as PID 1 this spares only ourselves */
	sync();
	umount2("/tmp", MNT_DETACH);
	umount2("/dev/shm", MNT_DETACH);
	umount2("/dev/pts", MNT_DETACH);
	mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	sync();
	/* The kernel prints its "reboot: …" line on the console, which the host reads to tell
	 * a power-off from a halt or a reset (src/vm/guestEnd.ts) and ends the VM. */
	reboot(how);
	logmsg("reboot: %s", strerror(errno));
	for (;;)
		pause();
}
