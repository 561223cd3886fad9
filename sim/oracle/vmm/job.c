// SPDX-License-Identifier: GPL-2.0-only
/*
 * job.c: the oracle VMM's job file (written by sim/oracle/kvm.py:encode_job),
 * one record per line, numbers in hex:
 *
 *   S name                         a stream begins
 *   V nr_vcpus protected ram_base ram_size save save_pending
 *   F gpa hexbytes                 RAM the VMM fills before the vCPU runs
 *   M gpa                          a page the protected guest MEM_SHAREs first
 *   W 8|32|64 gpa value            a store by the L2 vCPU (MMIO, or guest RAM)
 *   C slot cwriter dw0dw1dw2dw3    a command: 32 bytes at slot, then CWRITER
 *   R gpa                          a host read of this guest address
 *   X name                         a restore into a second VM begins
 *   P gpa hexbytes                 a patch of the saved image, for that restore
 *   Q dw0dw1dw2dw3                 a command the restored guest queues
 *   E                              the stream ends: run it
 *
 * W and C records become the L2 program's ops, in the order given.
 */
#include <stdlib.h>
#include <string.h>

#include "vmm.h"

static void push_op(struct stream *s, uint64_t w)
{
	if (s->nr_ops == s->cap_ops) {
		s->cap_ops = s->cap_ops ? 2 * s->cap_ops : 256;
		s->ops = xrealloc(s->ops, s->cap_ops * 8);
	}
	s->ops[s->nr_ops++] = w;
}

static void parse_hex(const char *hex, struct patch *pt, uint64_t gpa)
{
	size_t n = strlen(hex) / 2, i;

	pt->gpa = gpa;
	pt->len = n;
	pt->data = xrealloc(NULL, n ? n : 1);
	for (i = 0; i < n; i++)
		sscanf(hex + 2 * i, "%2hhx", &pt->data[i]);
}

void job_free(struct stream *s)
{
	int i, j;

	for (i = 0; i < s->nr_fills; i++)
		free(s->fills[i].data);
	for (i = 0; i < s->nr_restores; i++) {
		for (j = 0; j < s->restores[i].nr_patches; j++)
			free(s->restores[i].patches[j].data);
		free(s->restores[i].patches);
		free(s->restores[i].cmds);
	}
	free(s->fills);
	free(s->ops);
	free(s->shares);
	free(s->reads);
	free(s->restores);
	memset(s, 0, sizeof(*s));
}


static void die_job(int lineno, const char *line)
{
	fprintf(stderr, "vmm: job line %d: cannot parse: %.80s\n", lineno, line);
	exit(2);
}

/* Read the next stream; 1 when one is complete, 0 at the end of the job. */
int job_next(FILE *job, struct stream *s)
{
	static char line[1 << 20], hex[1 << 20];
	static int lineno;
	unsigned long long a, b, c;
	int n;

	job_free(s);
	while (fgets(line, sizeof(line), job)) {
		char *arg = line + 2;
		struct patch pt;

		lineno++;
		line[strcspn(line, "\n")] = 0;
		switch (line[0]) {
		case 'S':
			job_free(s);
			snprintf(s->name, sizeof(s->name), "%s", arg);
			break;
		case 'V':
			if (sscanf(arg, "%d %d %llx %llx %d %d", &s->nr_vcpus, &s->protected,
				   &a, &b, &s->save, &s->save_pending) != 6 ||
			    s->nr_vcpus < 1 || s->nr_vcpus > 8 || b % PAGE || !b)
				die_job(lineno, line);
			s->ram_base = a;
			s->ram_size = b;
			break;
		case 'F':
		case 'P':
			if (sscanf(arg, "%llx %s", &a, hex) != 2)
				die_job(lineno, line);
			parse_hex(hex, &pt, a);
			if (line[0] == 'F') {
				s->fills = xrealloc(s->fills, (s->nr_fills + 1) * sizeof(pt));
				s->fills[s->nr_fills++] = pt;
			} else {
				struct restore *rs;

				if (!s->nr_restores)
					die_job(lineno, line);
				rs = &s->restores[s->nr_restores - 1];
				rs->patches = xrealloc(rs->patches,
						       (rs->nr_patches + 1) * sizeof(pt));
				rs->patches[rs->nr_patches++] = pt;
			}
			break;
		case 'M':
			if (sscanf(arg, "%llx", &a) != 1)
				die_job(lineno, line);
			s->shares = xrealloc(s->shares, (s->nr_shares + 1) * 8);
			s->shares[s->nr_shares++] = a;
			break;
		case 'W':
			if (sscanf(arg, "%d %llx %llx", &n, &a, &b) != 3 ||
			    (n != 8 && n != 32 && n != 64))
				die_job(lineno, line);
			push_op(s, n == 8 ? OP_W8 : n == 32 ? OP_W32 : OP_W64);
			push_op(s, a);
			push_op(s, b);
			break;
		case 'C':
			if (sscanf(arg, "%llx %llx %64s", &a, &b, hex) != 3 || strlen(hex) != 64)
				die_job(lineno, line);
			parse_hex(hex, &pt, 0);
			push_op(s, OP_CMD);
			push_op(s, a);
			push_op(s, ITS_BASE + 0x88);
			push_op(s, b);
			push_op(s, ITS_BASE + 0x90);
			for (n = 0; n < 4; n++) {
				memcpy(&c, pt.data + 8 * n, 8);
				push_op(s, c);
			}
			free(pt.data);
			s->nr_cmds++;
			break;
		case 'Q': {
			struct restore *rs;

			if (!s->nr_restores || sscanf(arg, "%64s", hex) != 1 || strlen(hex) != 64)
				die_job(lineno, line);
			rs = &s->restores[s->nr_restores - 1];
			parse_hex(hex, &pt, 0);
			rs->cmds = xrealloc(rs->cmds, (rs->nr_cmds + 1) * 32);
			memcpy(&rs->cmds[4 * rs->nr_cmds++], pt.data, 32);
			free(pt.data);
			break;
		}
		case 'R':
			if (sscanf(arg, "%llx", &a) != 1)
				die_job(lineno, line);
			s->reads = xrealloc(s->reads, (s->nr_reads + 1) * 8);
			s->reads[s->nr_reads++] = a;
			break;
		case 'X':
			s->restores = xrealloc(s->restores,
					      (s->nr_restores + 1) * sizeof(*s->restores));
			memset(&s->restores[s->nr_restores], 0, sizeof(*s->restores));
			snprintf(s->restores[s->nr_restores].name,
				 sizeof(s->restores[0].name), "%s", arg);
			s->nr_restores++;
			break;
		case 'E':
			if (!s->nr_vcpus)
				die_job(lineno, line);
			return 1;
		case '#':
		case 0:
			break;
		default:
			die_job(lineno, line);
		}
	}
	return 0;
}
