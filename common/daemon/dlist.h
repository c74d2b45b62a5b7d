/* common/daemon/dlist: an intrusive doubly linked list, for what the loop
 * thread holds and lets go of in any order: open connections, requests in
 * flight, jobs whose transfer runs. The node lives inside the element
 * (PD_DNODE_ENTRY finds the element again), so adding never allocates, and
 * removing any node is O(1). No lock: one thread owns a list.
 *
 *   struct req { ...; struct pd_dnode link; };
 *   struct pd_dlist inflight = {0};
 *   pd_dlist_push(&inflight, &r->link);                 // at the front
 *   for (struct pd_dnode *n = inflight.head; n; n = n->next)
 *       use(PD_DNODE_ENTRY(n, struct req, link));
 *   pd_dlist_remove(&inflight, &r->link);               // r stays the caller's
 */
#ifndef PD_DLIST_H
#define PD_DLIST_H

#include <stddef.h>
#include <stdint.h>

struct pd_dnode {
    struct pd_dnode *prev, *next;
};

struct pd_dlist {
    struct pd_dnode *head;
    uint32_t n; /* nodes in the list */
};

#define PD_DNODE_ENTRY(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

static inline void pd_dlist_push(struct pd_dlist *l, struct pd_dnode *n)
{
    n->prev = NULL;
    n->next = l->head;
    if (l->head)
        l->head->prev = n;
    l->head = n;
    l->n++;
}

/* n, which is in l, out of it. */
static inline void pd_dlist_remove(struct pd_dlist *l, struct pd_dnode *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        l->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    n->prev = n->next = NULL;
    l->n--;
}

#endif
