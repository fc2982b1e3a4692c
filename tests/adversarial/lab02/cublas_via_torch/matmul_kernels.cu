// Lab 02, CUDA part: fp32 GEMM, C[M,N] = A[M,K] @ B[K,N], all row-major and contiguous.
//
// One file, four kernels, each a rung of the optimization ladder (llm.c style). Run them through the
// given launcher, which compiles this file with NVRTC via CuPy:
//     from cuda_matmul import matmul; c = matmul(a, b, kernel=3)        # or kernel="sgemm_smem_tiled"
// Compile check (any machine with nvcc, no GPU needed):
//     nvcc -arch=sm_90 -std=c++17 -ptx matmul_kernels.cu -o /dev/null
// Grade: labs grade lab02
//
// kernel 1  sgemm_naive             one thread per C element; threadIdx.x walks ROWS of C, so the 32
//                                   threads of a warp read 32 different rows of A: uncoalesced.
// kernel 2  sgemm_coalesced         threadIdx.x walks COLUMNS: a warp reads 32 consecutive floats of B
//                                   (one 128-byte transaction) and one broadcast float of A.
// kernel 3  sgemm_smem_tiled        (you) 32x32 tiles of A and B staged in shared memory: each float
//                                   loaded from HBM is used 32 times instead of once.
// kernel 4  sgemm_register_blocked  (you) a 128x128 tile per block, 8x8 outputs per thread held in
//                                   registers: each shared-memory load feeds 8 FMAs.
//
// No system headers: NVRTC compiles this file without them. Sizes need not be multiples of the tiles.

// A TODO left in a kernel: the launcher refuses to run a kernel whose body still contains one.
#define LAB_TODO(msg) return

// ---- kernel 1 ------------------------------------------------------------------------------------
extern "C" __global__ void sgemm_naive(const float* A, const float* B, float* C, int M, int N, int K) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    const int col = blockIdx.y * blockDim.y + threadIdx.y;
    if (row < M && col < N) {
        float acc = 0.f;
        for (int k = 0; k < K; ++k) acc += A[(size_t)row * K + k] * B[(size_t)k * N + col];
        C[(size_t)row * N + col] = acc;
    }
}

// ---- kernel 2 ------------------------------------------------------------------------------------
extern "C" __global__ void sgemm_coalesced(const float* A, const float* B, float* C, int M, int N, int K) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row < M && col < N) {
        float acc = 0.f;
        for (int k = 0; k < K; ++k) acc += A[(size_t)row * K + k] * B[(size_t)k * N + col];
        C[(size_t)row * N + col] = acc;
    }
}

// ---- kernel 3: shared-memory tiling ----------------------------------------------------------------
// Block (32, 32) computes the 32x32 tile of C at (blockIdx.y, blockIdx.x). Per K-step of 32, every
// thread loads one float of A and one of B into shared memory, then does 32 FMAs from shared memory.
// HBM traffic per block: 2 * 32 * K floats for 32 * 32 outputs, i.e. 32x less than kernel 2.
#define TILE 32
extern "C" __global__ void sgemm_smem_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * TILE + ty;
    const int col = blockIdx.x * TILE + tx;
    float acc = 0.f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        // Out-of-range elements load as 0 so the inner loop needs no bounds checks.
        As[ty][tx] = (row < M && k0 + tx < K) ? A[(size_t)row * K + k0 + tx] : 0.f;
        Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(size_t)(k0 + ty) * N + col] : 0.f;
        __syncthreads();                       // tiles complete before anyone reads them
#pragma unroll
        for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];   // As: broadcast, Bs: conflict-free
        __syncthreads();                       // everyone done reading before the next overwrite
    }
    if (row < M && col < N) C[(size_t)row * N + col] = acc;
}

// ---- kernel 4: 2D register blocking --------------------------------------------------------------
// 256 threads compute a BM x BN = 128 x 128 tile of C; thread (tRow, tCol) owns an 8 x 8 sub-tile in
// registers. Per K-step of BK = 8: the block stages A[128 x 8] (stored transposed, As[k][m]) and
// B[8 x 128] in shared memory; each thread reads 8 values of A and 8 of B per k and does 64 FMAs.
// Shared-memory loads per FMA: 16 / 64 = 0.25 (kernel 3: 2 per FMA). When K and N are multiples of 4
// the tiles are fetched with 16-byte loads (one per thread per tile).
#define BM 128
#define BN 128
#define BK 8
#define TM 8
#define TN 8
#define NTHREADS ((BM / TM) * (BN / TN))   // 256

extern "C" __global__ void __launch_bounds__(NTHREADS)
sgemm_register_blocked(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                       int M, int N, int K) {
    __shared__ __align__(16) float As[BK][BM];
    __shared__ __align__(16) float Bs[BK][BN];
    const int tid = threadIdx.x;
    const int tRow = tid / (BN / TN);      // 0..15
    const int tCol = tid % (BN / TN);      // 0..15
    const int bRow = blockIdx.y * BM, bCol = blockIdx.x * BN;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
    float regM[TM], regN[TN];
    // 16-byte global loads need 16-byte aligned rows: aligned base pointers and K, N multiples of 4.
    // Then no float4 straddles a row end (k and n offsets are multiples of 4 too).
    const bool vec4 = (K % 4 == 0) && (N % 4 == 0) && (reinterpret_cast<size_t>(A) % 16 == 0) &&
                      (reinterpret_cast<size_t>(B) % 16 == 0);

    for (int k0 = 0; k0 < K; k0 += BK) {
        if (vec4) {
            // One 16-byte load per thread for each tile (rows of A and B are 16-byte aligned).
            const int m = tid / (BK / 4), ka = (tid % (BK / 4)) * 4;           // A: 128 rows x 2 float4
            const int gm = bRow + m, gka = k0 + ka;
            const float4 av = (gm < M && gka < K) ? *reinterpret_cast<const float4*>(&A[(size_t)gm * K + gka])
                                                  : make_float4(0.f, 0.f, 0.f, 0.f);
            As[ka + 0][m] = av.x; As[ka + 1][m] = av.y; As[ka + 2][m] = av.z; As[ka + 3][m] = av.w;
            const int kb = tid / (BN / 4), n = (tid % (BN / 4)) * 4;           // B: 8 rows x 32 float4
            const int gkb = k0 + kb, gn = bCol + n;
            *reinterpret_cast<float4*>(&Bs[kb][n]) =
                (gkb < K && gn < N) ? *reinterpret_cast<const float4*>(&B[(size_t)gkb * N + gn])
                                    : make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
            // A tile: 1024 floats, 4 per thread; consecutive threads read consecutive k of one row.
#pragma unroll
            for (int i = 0; i < (BM * BK) / NTHREADS; ++i) {
                const int idx = tid + i * NTHREADS;
                const int m = idx / BK, k = idx % BK;
                const int gm = bRow + m, gk = k0 + k;
                As[k][m] = (gm < M && gk < K) ? A[(size_t)gm * K + gk] : 0.f;
            }
            // B tile: 1024 floats, 4 per thread; consecutive threads read consecutive n (coalesced).
#pragma unroll
            for (int i = 0; i < (BK * BN) / NTHREADS; ++i) {
                const int idx = tid + i * NTHREADS;
                const int k = idx / BN, n = idx % BN;
                const int gk = k0 + k, gn = bCol + n;
                Bs[k][n] = (gk < K && gn < N) ? B[(size_t)gk * N + gn] : 0.f;
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            // 16-byte shared-memory loads: two float4 for each of regM and regN.
            const float4* am = reinterpret_cast<const float4*>(&As[k][tRow * TM]);
            const float4* bn = reinterpret_cast<const float4*>(&Bs[k][tCol * TN]);
            const float4 a0 = am[0], a1 = am[1], b0 = bn[0], b1 = bn[1];
            regM[0] = a0.x; regM[1] = a0.y; regM[2] = a0.z; regM[3] = a0.w;
            regM[4] = a1.x; regM[5] = a1.y; regM[6] = a1.z; regM[7] = a1.w;
            regN[0] = b0.x; regN[1] = b0.y; regN[2] = b0.z; regN[3] = b0.w;
            regN[4] = b1.x; regN[5] = b1.y; regN[6] = b1.z; regN[7] = b1.w;
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += regM[i] * regN[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int gm = bRow + tRow * TM + i;
        if (gm >= M) break;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int gn = bCol + tCol * TN + j;
            if (gn < N) C[(size_t)gm * N + gn] = acc[i][j];
        }
    }
}
