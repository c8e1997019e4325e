//! A pool of GPU buffers by size class and usage, so repeated plans and read-backs reuse memory
//! instead of allocating: once warm, a decode step creates no buffers at all.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<(u64, wgpu::BufferUsages), Vec<wgpu::Buffer>>>,
}

/// Sizes round up to 256 B, then to a quarter-power-of-two step (≤ 25% waste).
pub fn size_class(size: u64) -> u64 {
    let size = size.max(256).next_multiple_of(256);
    let pow = 63 - size.leading_zeros() as u64; // floor(log2)
    if pow < 10 {
        return size.next_power_of_two();
    }
    let step = 1u64 << (pow - 2);
    size.next_multiple_of(step)
}

impl BufferPool {
    pub fn take(&self, size: u64, usage: wgpu::BufferUsages) -> Option<wgpu::Buffer> {
        let mut free = self.free.lock().ok()?;
        free.get_mut(&(size_class(size), usage))?.pop()
    }

    pub fn give_back(&self, buffer: wgpu::Buffer) {
        if let Ok(mut free) = self.free.lock() {
            free.entry((buffer.size(), buffer.usage())).or_default().push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_bounded_waste() {
        for size in [1u64, 255, 256, 257, 1000, 4096, 5000, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let class = size_class(size);
            assert!(class >= size, "{size} -> {class}");
            assert!(class <= (size.max(256) * 5 / 4).max(1024), "{size} -> {class} wastes too much");
            assert_eq!(size_class(class), class, "classes are fixed points");
        }
    }
}
