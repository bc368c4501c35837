// CRC-32C (Castagnoli), the checksum of checkpoint files: the SSE4.2 crc32
// instruction where the CPU has it (several GB/s, so checksumming never
// limits a save), a table otherwise. Same values as RFC 3720, iSCSI, ext4.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fulcrum {

// The CRC-32C of `size` bytes continuing from `crc` (the CRC of the bytes
// before; 0 to start): Crc32c(b, nb, Crc32c(a, na)) == CRC of a followed by b.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

// The table implementation alone (tests compare the two).
uint32_t Crc32cPortable(const void* data, size_t size, uint32_t crc = 0);

}  // namespace fulcrum
