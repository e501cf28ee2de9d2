//! The broker's global allocator: the system allocator, except that very
//! large allocations are reserved with `mmap(MAP_NORESERVE)`.
//!
//! Why: `kafka-protocol` decodes an array by first calling
//! `Vec::with_capacity(n)` with the length `n` read from the wire. A 5-byte
//! request body claiming 2^31 elements asks for ~100 GB; the allocation
//! fails and Rust aborts the whole broker. The request fails to decode a few
//! bytes later anyway, so the memory is never touched. Reserving large
//! blocks without committing memory lets that allocation succeed as untouched
//! address space, the decoder fail with an error, and the block be unmapped;
//! one hostile client can no longer kill the broker. Legitimate allocations
//! this large do not occur in the broker (requests are capped by
//! `socket.request.max.bytes`). Under `vm.overcommit_memory=2` the kernel
//! ignores MAP_NORESERVE and the old abort remains; the bound should move
//! into the decoder itself (kafka-protocol-rs has open pull requests that do
//! this; when one lands, this allocator can go).

use std::alloc::{GlobalAlloc, Layout, System};

/// Keeps freed buffers of up to 32 MiB in the allocator's heaps for reuse
/// instead of returning them to the kernel at once. A Fetch response holds
/// its log reads (about 1 MiB per partition) until it is written; by
/// default glibc serves blocks that large with fresh `mmap`s, or trims them
/// off its heaps when freed, so every read faulted its pages in again and
/// the kernel zeroed them: over a quarter of the broker's CPU when one
/// consumer read 8 partitions. What stays in the heaps is bounded by what
/// the broker's budgets let it hold at once.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // thread is started.
    unsafe {
        // 32 MiB is glibc's largest mmap threshold on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Allocations at least this large go to `mmap(MAP_NORESERVE)`.
const LARGE: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct NoReserveLarge;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

// SAFETY: every block is freed by the same mechanism that allocated it,
// chosen by the layout, which the caller must pass unchanged to dealloc.
unsafe impl GlobalAlloc for NoReserveLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // SAFETY: an anonymous private mapping has no preconditions.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    layout.size(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                ptr.cast()
            }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // Fresh anonymous pages are zero.
            // SAFETY: as for alloc.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            // SAFETY: `ptr` came from our mmap of `layout.size()` bytes. A
            // failed munmap leaks the mapping; there is nothing better to do.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size and align form a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_large(&layout) && !is_large(&new_layout) {
            // SAFETY: forwarded unchanged.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the smaller size, free the old block.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_untouched_vec_is_address_space_not_memory() {
        let v: Vec<u64> = Vec::with_capacity(1 << 34); // 128 GiB, never touched
        assert!(v.capacity() >= 1 << 34);
        let mut small: Vec<u8> = Vec::with_capacity(16);
        small.extend_from_slice(b"still works");
        assert_eq!(&small, b"still works");
    }
}
