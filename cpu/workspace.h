// The per-worker workspace of a planned call: every scratch array an item needs (tables of source rows, the
// forward's per-image products, the weight gradient's register tiles...) comes from the running worker's slot of
// one buffer, sized when the call is planned and taken once per call (from the buffer cache, cpu/buffer_cache.h),
// so no item allocates and running out of memory is an error of the call, not an abort in a worker.
//
// A plan sizes a slot by making the same sequence of Take calls on a WorkspaceSize that its items make on their
// WorkspaceSlot (one function for both keeps the two in step).
#ifndef JAXSEG_CPU_WORKSPACE_H_
#define JAXSEG_CPU_WORKSPACE_H_

#include <cstdint>

namespace jaxseg::cpu {

inline constexpr int64_t kWorkspaceAlign = 64;

constexpr int64_t WorkspaceBytes(int64_t bytes) {
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// Hands out 64-byte-aligned arrays of one worker's slot, front to back.
class WorkspaceSlot {
 public:
  explicit WorkspaceSlot(void* base) : next_(static_cast<char*>(base)) {}
  template <typename X>
  X* Take(int64_t n) {
    X* p = reinterpret_cast<X*>(next_);
    next_ += WorkspaceBytes(n * static_cast<int64_t>(sizeof(X)));
    return p;
  }

 private:
  char* next_;
};

// Counts what the same Take calls need.
class WorkspaceSize {
 public:
  template <typename X>
  X* Take(int64_t n) {
    bytes_ += WorkspaceBytes(n * static_cast<int64_t>(sizeof(X)));
    return nullptr;
  }
  int64_t bytes() const { return bytes_; }

 private:
  int64_t bytes_ = 0;
};

}  // namespace jaxseg::cpu

#endif  // JAXSEG_CPU_WORKSPACE_H_
