// SPDX-License-Identifier: GPL-2.0-only
/*
 * vmm.c: the oracle's VMM. Runs inside the L1 arm64 kernel (nested KVM under
 * QEMU, or pKVM with kvm-arm.mode=protected) and replays ITS command streams
 * against the kernel's own vITS (arch/arm64/kvm/vgic/vgic-its.c).
 *
 *   vmm JOB [STREAM_TIMEOUT_S]   reads the job file (job.c), writes the
 *                                observations to stdout; a stream running
 *                                longer than the timeout (300 s) is killed
 *
 * Built by sim/oracle/kvm.py: aarch64-linux-gnu-gcc -static -O2 vmm.c kvm.c
 * job.c l2.S.
 *
 * For each stream: a fresh VM (type bit 31 for a protected pKVM VM), a RAM
 * memslot and a code memslot at CODE_BASE, the vCPUs, a vGICv3 and a vITS
 * (kvm.c). RAM is filled, then vCPU0 runs l2.S over an op list built from the
 * job's W and C records; a protected VM first loads from every RAM page (all
 * of RAM is then donated to it), then MEM_SHAREs the result pages and the
 * stream's pages. The VMM then reads GITS_* and GICR<n>_* through the device
 * attributes, dumps RAM, runs KVM_DEV_ARM_ITS_SAVE_TABLES and
 * KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES (dumping RAM after each), and for each
 * restore creates a second VM like the first (a protected one runs the same
 * prologue, then PAUSEs), copies the saved image plus patches, restores the
 * redistributors and the ITS in the documented order, queues the restore's
 * commands if RESTORE_TABLES succeeded, and re-saves.
 *
 * Output, one record per line (numbers in hex, ioctl results as negative
 * decimal errnos):
 *   K uname-r             S name              c creadr...
 *   r REG value           p phase ret         m gpa word
 *   h gpa ok|fault        x name ret resave|- e message (the stream stopped)
 *   # comment (timings)   E (stream end)      Z (job end)
 * Memory is the non-zero 64-bit words the VMM can read; a page the host cannot
 * read (pKVM: owned by the protected guest) is skipped.
 *
 * Kernel behaviours relied on: vgic_mmio_write_its_cwriter() processes the
 * queue synchronously, so one CREADR read after each CWRITER write sees the
 * result; a store to an address in no memslot exits with KVM_EXIT_MMIO; pKVM
 * (arch/arm64/kvm/hyp/nvhe/pkvm.c:pkvm_memshare_call) maps a not-yet-faulted
 * page before sharing it and leaves the host's bytes in a donated page
 * (mem_protect.c:__pkvm_host_donate_guest does not clear it); a host access to
 * a guest-owned page is an abort injected into the host (host_inject_mem_abort)
 * that reaches the VMM as SIGSEGV, reported as "fault". Every ioctl is checked:
 * an unexpected failure stops that stream with an "e" record, not the run; each
 * stream runs in a child process (run_isolated), so a crash of the VMM does too,
 * and what the kernel logs (warning level or worse) while a stream runs follows
 * that stream's "E" as "# kernel" lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "vmm.h"

jmp_buf stream_jmp;

/* A stream-fatal error: reported, and the stream is abandoned. */
void fail(const char *fmt, ...)
{
	va_list ap;

	printf("e ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	longjmp(stream_jmp, 1);
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p) {
		fprintf(stderr, "vmm: out of memory\n");
		exit(1);
	}
	return p;
}

static void print_shares(const struct stream *s, const uint64_t *res, size_t nr_res)
{
	size_t i, k = nr_prologue_res(s, nr_res);

	for (i = 0; i < k; i++)
		if (res[i])
			printf("# MEM_SHARE %zu of the prologue: %llx\n", i,
			       (unsigned long long)res[i]);
}

/* Globals, so that the error path (a longjmp) can release them. */
static struct vm cur, rvm;
static struct image img;
static uint64_t *res;

/* CMD ops for commands the guest queues from the CBASER and CWRITER it knows. */
static size_t queue_ops(uint64_t *ops, const uint64_t *cmds, int nr, uint64_t cbaser,
			uint64_t cwriter)
{
	uint64_t base = cbaser & 0x000ffffffffff000ULL;	/* [51:12] */
	uint64_t size = ((cbaser & 0xff) + 1) * PAGE;
	uint64_t off = (cwriter & 0xfffe0) % size;
	size_t n = 0;
	int i;

	for (i = 0; i < nr; i++) {
		uint64_t next = (off + 32) % size;

		ops[n++] = OP_CMD;
		ops[n++] = base + off;
		ops[n++] = ITS_BASE + 0x88;
		ops[n++] = next;
		ops[n++] = ITS_BASE + 0x90;
		memcpy(&ops[n], &cmds[4 * i], 32);
		n += 4;
		off = next;
	}
	return n;
}

static void run_restore(const struct stream *s, const struct restore *rs,
			const struct image *im, const struct regs *rg)
{
	size_t nr_res = rs->nr_cmds + s->nr_shares + 64, k = nr_prologue_res(s, nr_res), n, i;
	uint64_t *ops2;
	struct regs rg2;
	int r, rr = 0;

	vm_create(&rvm, s);
	for (i = 0; i < im->nr; i++)
		memcpy(rvm.ram + im->index[i] * PAGE, im->pages + i * PAGE, PAGE);
	for (i = 0; i < (size_t)rs->nr_patches; i++)
		poke(&rvm, &rs->patches[i]);
	n = l2_prologue(&rvm, s, nr_res);
	if (s->protected) {	/* own and share RAM as the first VM did */
		uint64_t *ops = (uint64_t *)(rvm.code + OPS_OFF);

		ops[n++] = OP_PAUSE;
		ops[n++] = CODE_BASE + OPS2_OFF;
		l2_boot(&rvm, CODE_BASE + OPS_OFF);
		l2_run(&rvm);
	}
	r = restore_gic(&rvm, rg);
	if (!r && rs->nr_cmds) {
		ops2 = (uint64_t *)(rvm.code + OPS2_OFF);
		n = queue_ops(ops2, rs->cmds, rs->nr_cmds, rg->its[3], rg->its[4]);
		ops2[n++] = OP_END;
		if (!s->protected)
			l2_boot(&rvm, CODE_BASE + OPS2_OFF);
		l2_run(&rvm);
	}
	if (!r)
		rr = dev_attr(rvm.its, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_CTRL,
			      KVM_DEV_ARM_ITS_SAVE_TABLES, NULL);
	if (r) {
		printf("x %s %d -\n", rs->name, r);
	} else {
		printf("x %s %d %d\n", rs->name, r, rr);
		if (rs->nr_cmds) {
			read_results(&rvm, res, nr_res);
			print_shares(s, res, nr_res);
			printf("c");
			for (i = 0; i < (size_t)rs->nr_cmds; i++)
				printf(" %llx", (unsigned long long)res[k + i]);
			printf("\n");
		}
	}
	read_regs(&rvm, &rg2);
	dump_ram(&rvm);
	vm_destroy(&rvm);
}

static void release(void)
{
	vm_destroy(&cur);
	vm_destroy(&rvm);
	free(img.index);
	free(img.pages);
	free(res);
	memset(&img, 0, sizeof(img));
	res = NULL;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000ULL + ts.tv_nsec / 1000;
}

/* Where a stream's time goes: "# t label us" since the previous lap. */
static uint64_t lap_t;

static void lap(const char *label)
{
	uint64_t t = now_us();

	printf("# t %s %llu\n", label, (unsigned long long)(t - lap_t));
	lap_t = t;
}

static void end_stream(uint64_t t0)
{
	printf("# us %llu\nE\n", (unsigned long long)(now_us() - t0));
	fflush(stdout);
}

static size_t max_restore_cmds(const struct stream *s)
{
	size_t m = 0;
	int i;

	for (i = 0; i < s->nr_restores; i++)
		if ((size_t)s->restores[i].nr_cmds > m)
			m = s->restores[i].nr_cmds;
	return m;
}

static void run_stream(const struct stream *s)
{
	uint64_t t0 = now_us(), *ops;
	const size_t max_res = max_restore_cmds(s);
	/* results: the prologue's MEM_SHAREs, then CREADR after each command */
	size_t nr_res = ((size_t)s->nr_cmds > max_res ? (size_t)s->nr_cmds : max_res) +
			s->nr_shares + 64, i, k, n;
	struct regs rg;
	int r;

	printf("S %s\n", s->name);
	if (setjmp(stream_jmp)) {
		release();
		end_stream(t0);
		return;
	}
	if (nr_res > MAX_RES || OPS_OFF + (s->nr_ops + 16 + s->nr_shares * 2 + 3 +
					   2 * nr_res / 512) * 8 > OPS2_OFF ||
	    OPS2_OFF + (max_res * 9 + 1) * 8 > RES_OFF)
		fail("stream too long for the code memslot");
	res = xrealloc(NULL, nr_res * 8);
	memset(res, 0, nr_res * 8);
	lap_t = t0;
	vm_create(&cur, s);
	for (i = 0; i < (size_t)s->nr_fills; i++)
		poke(&cur, &s->fills[i]);
	n = l2_prologue(&cur, s, nr_res);
	ops = (uint64_t *)(cur.code + OPS_OFF);
	memcpy(&ops[n], s->ops, s->nr_ops * 8);
	n += s->nr_ops;
	ops[n++] = OP_END;
	lap("create");
	l2_boot(&cur, CODE_BASE + OPS_OFF);
	l2_run(&cur);
	read_results(&cur, res, nr_res);
	lap("run");

	print_shares(s, res, nr_res);
	k = nr_prologue_res(s, nr_res);
	printf("c");
	for (i = 0; i < (size_t)s->nr_cmds; i++)
		printf(" %llx", (unsigned long long)res[k + i]);
	printf("\n");

	for (i = 0; i < (size_t)s->nr_reads; i++) {
		uint64_t off = s->reads[i] - s->ram_base, w;

		if (s->reads[i] < s->ram_base || off + 8 > s->ram_size)
			fail("host read %llx outside RAM", (unsigned long long)s->reads[i]);
		r = probe_copy(&w, cur.ram + off, 8);
		printf("h %llx %s\n", (unsigned long long)s->reads[i], r ? "fault" : "ok");
		if (r)
			printf("# host read %llx: signal %d\n",
			       (unsigned long long)s->reads[i], r);
	}
	read_regs(&cur, &rg);
	printf("p commands 0\n");
	dump_ram(&cur);
	lap("dump");
	if (s->save) {
		r = dev_attr(cur.its, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_CTRL,
			     KVM_DEV_ARM_ITS_SAVE_TABLES, NULL);
		printf("p save %d\n", r);
		dump_ram(&cur);
		lap("save");
	}
	if (s->save_pending) {
		r = dev_attr(cur.vgic, KVM_SET_DEVICE_ATTR, KVM_DEV_ARM_VGIC_GRP_CTRL,
			     KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES, NULL);
		printf("p save_pending %d\n", r);
		dump_ram(&cur);
		lap("save_pending");
	}
	if (s->nr_restores)
		snapshot(&cur, &img);
	vm_destroy(&cur);
	lap("destroy");
	for (i = 0; i < (size_t)s->nr_restores; i++) {
		run_restore(s, &s->restores[i], &img, &rg);
		lap("restore");
	}
	release();
	end_stream(t0);
}

/*
 * Run one stream in a child process, its output through a pipe: a VMM crash
 * (a signal, say after a kernel WARN) or a hang-free exit without the "E"
 * record becomes that stream's "e" record, and the run goes on. The child's
 * VMs die with its file descriptors.
 */
static int kmsg_fd = -1;
static uint64_t stream_timeout_us = 300 * 1000000ULL;

static void run_isolated(const struct stream *s)
{
	static char buf[1 << 16];
	size_t len = 0, keep;
	int fds[2], status, timed_out = 0;
	uint64_t t0 = now_us();
	ssize_t n;
	pid_t pid;
	char *out = NULL;

	fflush(stdout);
	if (pipe(fds) || (pid = fork()) < 0) {
		perror("vmm: pipe/fork");
		exit(1);
	}
	if (!pid) {
		close(fds[0]);
		dup2(fds[1], STDOUT_FILENO);
		close(fds[1]);
		run_stream(s);
		fflush(stdout);
		_exit(0);
	}
	close(fds[1]);
	for (;;) {
		struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
		uint64_t left = stream_timeout_us - (now_us() - t0);

		if (now_us() - t0 >= stream_timeout_us ||
		    poll(&pfd, 1, (int)(left / 1000) + 1) == 0) {
			kill(pid, SIGKILL);
			timed_out = 1;
			break;
		}
		n = read(fds[0], buf, sizeof(buf));
		if (n <= 0)
			break;
		out = xrealloc(out, len + n + 1);
		memcpy(out + len, buf, n);
		len += n;
	}
	close(fds[0]);
	waitpid(pid, &status, 0);
	if (WIFEXITED(status) && !WEXITSTATUS(status) && len >= 2 &&
	    !memcmp(out + len - 2, "E\n", 2)) {
		fwrite(out, 1, len, stdout);
	} else {
		for (keep = len; keep && out[keep - 1] != '\n'; keep--)
			;
		if (keep)
			fwrite(out, 1, keep, stdout);
		else
			printf("S %s\n", s->name);
		if (timed_out)
			printf("e the stream took more than %llu s: killed\n",
			       (unsigned long long)(stream_timeout_us / 1000000));
		else if (WIFSIGNALED(status))
			printf("e the VMM died of signal %d (see the kernel log)\n",
			       WTERMSIG(status));
		else
			printf("e the VMM exited with status %d mid-stream\n",
			       WEXITSTATUS(status));
		printf("E\n");
	}
	free(out);
	fflush(stdout);
}

/*
 * What the kernel logged at warning level or worse while the stream ran
 * (WARN, BUG, RCU stalls), from /dev/kmsg: "# kernel" lines after the stream.
 */
static void drain_kmsg(void)
{
	static char rec[8192];
	ssize_t n;
	int level;
	char *msg;

	if (kmsg_fd < 0)
		return;
	while ((n = read(kmsg_fd, rec, sizeof(rec) - 1)) > 0 || (n < 0 && errno == EPIPE)) {
		if (n <= 0)
			continue;	/* overwritten records: go on with the next */
		rec[n] = 0;
		msg = strchr(rec, ';');
		if (!msg || sscanf(rec, "%d", &level) != 1 || (level & 7) > 4)
			continue;
		msg[strcspn(msg, "\n")] = 0;
		printf("# kernel %s\n", msg + 1);
	}
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static struct stream s;
	struct utsname u;
	FILE *job;
	int n;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: vmm JOB [STREAM_TIMEOUT_S]\n");
		return 2;
	}
	if (argc == 3)
		stream_timeout_us = strtoull(argv[2], NULL, 10) * 1000000ULL;
	job = fopen(argv[1], "r");
	if (!job) {
		perror(argv[1]);
		return 2;
	}
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0) {
		perror("/dev/kvm");
		return 2;
	}
	n = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (n <= 0) {
		perror("KVM_GET_VCPU_MMAP_SIZE");
		return 2;
	}
	run_size = n;
	install_fault_handlers();
	kmsg_fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (kmsg_fd >= 0)
		lseek(kmsg_fd, 0, SEEK_END);
	uname(&u);
	printf("K %s\n", u.release);
	while (job_next(job, &s)) {
		run_isolated(&s);
		drain_kmsg();
	}
	job_free(&s);
	printf("Z\n");
	return 0;
}
