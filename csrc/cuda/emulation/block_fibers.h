// A block's threads as fibers on one OS thread (ucontext), switched at its barriers: the
// emulation's __syncthreads and __syncwarp. A block of 256 threads as std::threads on a
// 2-core machine spent most of its time in the kernel's scheduler (8 million involuntary
// context switches in one run, more system time than user time) and starved whatever ran
// beside it; fibers switch in user space, on one core, in a fixed order.
//
// Under ThreadSanitizer each fiber is a TSan fiber, switched to without synchronisation, and
// a barrier is a release by every arriving thread and an acquire by every leaving one: two
// threads' accesses to one word with no barrier between them are still a reported race,
// whatever order the scheduler ran them in.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

// Which sanitizer this build has: GCC says so by __SANITIZE_THREAD__ / __SANITIZE_ADDRESS__,
// clang by __has_feature.
#if defined(__SANITIZE_THREAD__)
#define SK_WITH_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SK_WITH_ASAN 1
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) && !defined(SK_WITH_TSAN)
#define SK_WITH_TSAN 1
#endif
#if __has_feature(address_sanitizer) && !defined(SK_WITH_ASAN)
#define SK_WITH_ASAN 1
#endif
#endif

#if defined(SK_WITH_TSAN)
#include <sanitizer/tsan_interface.h>
#define SK_FIBERS_TSAN 1
// The scheduler's own state (whose turn it is, the barriers' counts, threadIdx) is shared by
// the fibers and the scheduler by design, in an order the switches fix: its functions are not
// instrumented, the kernels they run are.
#define SK_FIBERS_UNCHECKED __attribute__((no_sanitize("thread")))
#else
#define SK_FIBERS_UNCHECKED
#endif

namespace sobolev::emulation {

// A barrier of `expected` threads. Its two sync words alternate by generation: a thread
// leaving generation g acquires only what arrived at g, not what a faster thread released
// arriving at g + 1 (which would hide a race between the two). Generation g + 2 cannot
// begin before every thread has left g.
struct FiberBarrier {
  explicit FiberBarrier(int expected_threads) : expected(expected_threads) {}
  int expected, arrived = 0;
  unsigned generation = 0;
  char sync_words[2] = {};
};

class BlockFibers {
 public:
  // Runs body() for thread_index = 0 .. threads - 1, each as a fiber, until all return;
  // *thread_index (the shim's threadIdx.x) is set before each switch to a fiber. `name` is
  // for a deadlock's message.
  template <typename Body>
  void run(int threads, Body& body, unsigned* thread_index, const char* name) {
    body_ = &body;
    call_ = [](void* b) { (*static_cast<Body*>(b))(); };
    thread_index_ = thread_index;
    run_all(threads, name);
  }

  // Called by the running fiber: arrive, then switch away until every thread has arrived.
  SK_FIBERS_UNCHECKED void arrive_and_wait(FiberBarrier& barrier) {
    const unsigned generation = barrier.generation;
#ifdef SK_FIBERS_TSAN
    __tsan_release(&barrier.sync_words[generation % 2]);
#endif
    progressed_ = true;
    if (++barrier.arrived == barrier.expected) {
      barrier.arrived = 0;
      ++barrier.generation;
    } else {
      while (barrier.generation == generation) yield();
      progressed_ = true;
    }
#ifdef SK_FIBERS_TSAN
    __tsan_acquire(&barrier.sync_words[generation % 2]);
#endif
  }

 private:
  // (AddressSanitizer clears the shadow of a whole stack at each switch to it: small stacks)
  static constexpr size_t kStackBytes = size_t{1} << 18;
  static constexpr size_t kGuardBytes = size_t{1} << 16;  // below each stack: overflows fault

  struct Fiber {
    ucontext_t context;
    char* stack = nullptr;  // mapped once, reused by every block
    bool done = false;
#ifdef SK_FIBERS_TSAN
    void* tsan = nullptr;
#endif
  };

  static inline BlockFibers* running_ = nullptr;

  SK_FIBERS_UNCHECKED static void entry() {
    BlockFibers& self = *running_;
    self.yield();  // started: the body runs from the first round on
    self.call_(self.body_);
    self.fibers_[self.current_].done = true;
    self.progressed_ = true;
#ifdef SK_FIBERS_TSAN
    // synchronised: a fiber of a later block on this stack must not race with this one's
    // frames (the scheduler passes them on as it starts that block's fibers)
    __tsan_switch_to_fiber(self.main_tsan_, 0);
#endif
  }  // returns to uc_link: the scheduler

  SK_FIBERS_UNCHECKED void yield() {
#ifdef SK_FIBERS_TSAN
    __tsan_switch_to_fiber(main_tsan_, __tsan_switch_to_fiber_no_sync);
#endif
    swapcontext(&fibers_[current_].context, &main_);
  }

  SK_FIBERS_UNCHECKED void run_all(int threads, const char* name) {
    running_ = this;
    if (static_cast<int>(fibers_.size()) < threads) fibers_.resize(threads);
#ifdef SK_FIBERS_TSAN
    main_tsan_ = __tsan_get_current_fiber();
#endif
    for (int t = 0; t < threads; ++t) {
      Fiber& f = fibers_[t];
      if (f.stack == nullptr) f.stack = map_stack();
      f.done = false;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack;
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &main_;
      makecontext(&f.context, &BlockFibers::entry, 0);
#ifdef SK_FIBERS_TSAN
      f.tsan = __tsan_create_fiber(0);
      // the one synchronised switch into the fiber: before any of this block's fibers has
      // run, so a fiber inherits the earlier blocks' writes and none of its own block's
      __tsan_switch_to_fiber(f.tsan, 0);
#endif
      current_ = t;
      swapcontext(&main_, &f.context);
    }
    for (int remaining = threads; remaining > 0;) {
      progressed_ = false;
      for (int t = 0; t < threads; ++t) {
        Fiber& f = fibers_[t];
        if (f.done) continue;
        current_ = t;
        *thread_index_ = t;
#ifdef SK_FIBERS_TSAN
        __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
        swapcontext(&main_, &f.context);
        if (f.done) --remaining;
      }
      if (!progressed_ && remaining > 0) {
        std::fprintf(stderr,
                     "emulation: %s deadlocked: %d of %d threads wait at a barrier the "
                     "others never reach\n",
                     name, remaining, threads);
        std::abort();
      }
    }
#ifdef SK_FIBERS_TSAN
    for (int t = 0; t < threads; ++t) __tsan_destroy_fiber(fibers_[t].tsan);
#endif
  }

  static char* map_stack() {
    void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED || mprotect(p, kGuardBytes, PROT_NONE) != 0) {
      std::perror("emulation: a fiber's stack");
      std::abort();
    }
    return static_cast<char*>(p) + kGuardBytes;
  }

  void* body_ = nullptr;
  void (*call_)(void*) = nullptr;
  unsigned* thread_index_ = nullptr;
  std::vector<Fiber> fibers_;
  ucontext_t main_;
  int current_ = 0;
  bool progressed_ = false;
#ifdef SK_FIBERS_TSAN
  void* main_tsan_ = nullptr;
#endif
};

}  // namespace sobolev::emulation
