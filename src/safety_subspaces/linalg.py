"""Pure linear algebra of the paper: bases, ranks, projections, energies, cosines and Mode Subspace Overlap.

No files, no models: tensors in, tensors or floats out. Conventions (docs/design.md):
a tensor is a matrix M (m x n) in its stored layout; 1-D tensors are (n x 1), >=3-D are (shape[0], -1);
bases are orthonormal columns B (m x k) of the output (left) side; P = B B^T.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping, Sequence

import torch

SVD_METHODS: tuple[str, ...] = ("auto", "gram", "qr", "svd")
EPS64 = torch.finfo(torch.float64).eps
# auto: the gram route (falling back to qr) when the long side is at least TALL_RATIO times the short side
# (embeddings, MLP matrices), LAPACK's float64 SVD for near-square ones (faster there than QR first, and its U is
# orthonormal to eps64 whatever the condition).
TALL_RATIO = 2
# The Gram route's errors are those of the QR route times about the condition number kappa (orthogonality loss
# ~ eps64 * kappa^2): it is used only when its own spectrum shows kappa <= GRAM_MAX_CONDITION (measured at 1e3:
# orthogonality loss ~1e-9, energies within 1e-8 of numpy's float64 SVD); beyond, the QR route decides.
GRAM_MAX_CONDITION = 1e3
QR_BLOCK_ELEMENTS = 1 << 23  # float64 elements per row block of the chunked QR, the Gram and the U pass (64 MiB)
# Elements per row block when a large tensor is streamed through an energy product or a swap (32 MiB in float32):
# a tensor with at most this many elements is one block, computed exactly as a whole tensor.
STREAM_ELEMENTS = 1 << 23
RANK_RULE = ("numerical rank = #{sigma_i > sigma_max * max(m, n) * eps_float64} (numpy's matrix_rank); the directions "
             "below it are numerically zero and left out of every basis")


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """View a tensor as the matrix the paper decomposes: 1-D -> (n, 1), >=3-D -> (shape[0], -1)."""
    if tensor.ndim == 0:
        return tensor.reshape(1, 1)
    if tensor.ndim == 1:
        return tensor.reshape(-1, 1)
    if tensor.ndim == 2:
        return tensor
    return tensor.reshape(tensor.shape[0], -1)


def row_blocks(shape: Sequence[int], block_elements: int | None = None) -> list[slice]:
    """Row ranges (along dim 0) covering a tensor in blocks of about block_elements (default STREAM_ELEMENTS);
    [slice(None)] when it is one block."""
    block_elements = block_elements or STREAM_ELEMENTS
    shape = tuple(shape)
    numel = math.prod(shape)
    if len(shape) < 2 or numel <= block_elements:
        return [slice(None)]
    rows = max(1, block_elements // max(1, numel // shape[0]))
    return [slice(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


def add_coefficients(total: torch.Tensor | None, frame_rows: torch.Tensor, delta_rows: torch.Tensor) -> torch.Tensor:
    """total + F_bᵀ Δ_b (float32): the coefficients Fᵀ Δ accumulated over row blocks (total None: the first block)."""
    product = frame_rows.T.float() @ as_matrix(delta_rows).float()
    return product if total is None else total.add_(product)


def row_energies(coefficients: torch.Tensor) -> torch.Tensor:
    """e_i = ||row i of Fᵀ Δ||² in float64: the coefficient energies of each frame column."""
    return (coefficients.double() ** 2).sum(dim=1)


def matrix_rank_bound(shape: Iterable[int]) -> int:
    """r = min(m, n) of the matrix view of a tensor of this shape."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1
    if len(shape) == 1:
        return 1
    m = shape[0]
    n = math.prod(shape[1:])
    return min(m, n)


def check_fraction(value: float, name: str = "fraction") -> float:
    """Return value if it lies in (0, 1], else raise ValueError naming it."""
    if not (isinstance(value, (int, float)) and 0 < value <= 1 and math.isfinite(value)):
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return float(value)


def rank_from_fraction(fraction: float, r: int, rank: int | None = None) -> int:
    """k = max(1, round(fraction * r)) (the reference code's rule; the paper writes floor), capped at the numerical rank.

    r = min(m, n); rank (default r) is the numerical rank of the decomposed matrix; 0 when either is 0.
    """
    check_fraction(fraction)
    cap = r if rank is None else min(rank, r)
    if cap <= 0:
        return 0
    return min(cap, max(1, round(fraction * r)))


def rank_from_energy(singular_values: torch.Tensor, eta: float, total_energy: float, *, rtol: float = 1e-6) -> int:
    """Smallest k with sum_{i<=k} sigma_i^2 >= eta * total_energy, total_energy being the exact ||M||_F^2.

    rtol absorbs float round-off between the spectrum and the directly computed total (eta = 1 stays reachable).
    If the given spectrum cannot reach eta * total (a truncated spectrum), all of it is used.
    """
    check_fraction(eta, "eta")
    if total_energy <= 0 or singular_values.numel() == 0:
        return 0
    cumulative = torch.cumsum(singular_values.double() ** 2, dim=0)
    target = eta * total_energy * (1 - rtol)
    reached = torch.nonzero(cumulative >= target)
    if reached.numel() == 0:
        return int(singular_values.numel())
    return int(reached[0].item()) + 1


def frobenius_sq(tensor: torch.Tensor) -> float:
    """||M||_F^2 in float64."""
    return inner(tensor, tensor)


CHUNK = 1 << 22  # elements per slice of element-wise passes over whole tensors (16 MiB in fp32)


def flat_chunks(*tensors: torch.Tensor, chunk: int = CHUNK) -> Iterator[tuple[torch.Tensor, ...]]:
    """Matching slices of the flattened tensors (views of contiguous ones), chunk elements at a time."""
    flat = [tensor.reshape(-1) for tensor in tensors]
    if len({part.numel() for part in flat}) > 1:
        raise ValueError(f"tensors of shapes {[tuple(t.shape) for t in tensors]} have different sizes")
    for start in range(0, flat[0].numel(), chunk):
        yield tuple(part[start : start + chunk] for part in flat)


def all_finite(tensor: torch.Tensor, chunk: int = CHUNK) -> bool:
    """Whether a tensor holds no NaN or Inf (checked in chunks, so no whole-size temporary)."""
    return all(bool(torch.isfinite(part).all()) for (part,) in flat_chunks(tensor, chunk=chunk))


def double_chunks(*tensors: torch.Tensor, chunk: int = CHUNK) -> Iterator[tuple[torch.Tensor, ...]]:
    """flat_chunks of the tensors converted to float64 in buffers reused from chunk to chunk (the values of .double(),
    without a fresh whole-chunk allocation, and its page faults, per chunk)."""
    size = min(chunk, tensors[0].numel())
    buffers = [torch.empty(size, dtype=torch.float64, device=t.device) for t in tensors]
    for parts in flat_chunks(*tensors, chunk=chunk):
        yield tuple(buffer[: part.numel()].copy_(part) for buffer, part in zip(buffers, parts))


def inner(a: torch.Tensor, b: torch.Tensor, *, chunk: int = CHUNK) -> float:
    """<a, b> over all entries, accumulated in float64 (chunk by chunk, so no whole-size float64 copies)."""
    if a.shape != b.shape:
        raise ValueError(f"inner product of tensors with shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a is b:
        return math.fsum(float(x @ x) for (x,) in double_chunks(a, chunk=chunk))
    return math.fsum(float(x @ y) for x, y in double_chunks(a, b, chunk=chunk))


def norm_sq_and_inner_parts(a: torch.Tensor, b: torch.Tensor, *, chunk: int = CHUNK) -> tuple[list[float], list[float]]:
    """Per-chunk float64 terms of ||a||_F^2 and <a, b> (their fsums are the totals; row blocks' terms can be pooled)."""
    if a.shape != b.shape:
        raise ValueError(f"inner product of tensors with shapes {tuple(a.shape)} and {tuple(b.shape)}")
    squares, dots = [], []
    for x, y in double_chunks(a, b, chunk=chunk):
        squares.append(float(x @ x))
        dots.append(float(x @ y))
    return squares, dots


def norm_sq_and_inner(a: torch.Tensor, b: torch.Tensor, *, chunk: int = CHUNK) -> tuple[float, float]:
    """(||a||_F^2, <a, b>) in one float64 pass over a (each chunk of a converted once); equal to frobenius_sq and inner."""
    squares, dots = norm_sq_and_inner_parts(a, b, chunk=chunk)
    return math.fsum(squares), math.fsum(dots)


def rank_tolerance(sigma_max: float, shape: tuple[int, int]) -> float:
    """sigma_max * max(m, n) * eps_float64: singular values at or below it are numerically zero (numpy's matrix_rank)."""
    return float(sigma_max) * max(shape) * EPS64


def numerical_rank(singular: torch.Tensor, shape: tuple[int, int]) -> int:
    """How many singular values (descending) exceed the float64 rank tolerance of a matrix of this shape."""
    if singular.numel() == 0:
        return 0
    return int((singular > rank_tolerance(float(singular[0]), shape)).sum())


def resolve_method(method: str, shape: tuple[int, int]) -> str:
    """The decomposition `method` names for a matrix of this shape (auto: gram when long >= TALL_RATIO * short, else svd)."""
    if method == "auto":
        return "gram" if max(shape) >= TALL_RATIO * min(shape) else "svd"
    if method not in SVD_METHODS:
        raise ValueError(f"unknown SVD method {method!r}; use {', '.join(SVD_METHODS)}")
    return method


def block_rows(columns: int) -> int:
    """Rows per float64 block of a matrix with this many columns (at least 4 x columns, so TSQR folds rarely)."""
    return max(4 * columns, QR_BLOCK_ELEMENTS // max(columns, 1))


def tall_r_factor(tall: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """R (n x n, float64) of a Householder QR of a tall matrix, from float64 row blocks (TSQR: no whole float64 copy).

    Each block's R is stacked; when the stack reaches a block's height it is folded into one R by another QR.
    """
    m, n = tall.shape
    rows = rows or block_rows(n)
    stack: list[torch.Tensor] = []
    height = 0
    for start in range(0, m, rows):
        stack.append(torch.linalg.qr(tall[start : start + rows].double(), mode="r").R)
        height += stack[-1].shape[0]
        if height >= rows and len(stack) > 1:
            stack = [torch.linalg.qr(torch.cat(stack), mode="r").R]
            height = stack[0].shape[0]
    if len(stack) > 1:
        return torch.linalg.qr(torch.cat(stack), mode="r").R
    return stack[0]


def left_from_right(matrix: torch.Tensor, right: torch.Tensor, singular: torch.Tensor) -> torch.Tensor:
    """U = M V Sigma^-1 (float32 result) for right singular vectors V (n x k) of a tall M, in float64 row blocks."""
    weights = right.double() / singular.double()
    left = torch.empty(matrix.shape[0], right.shape[1], dtype=torch.float32, device=matrix.device)
    rows = block_rows(matrix.shape[1])
    for start in range(0, matrix.shape[0], rows):
        left[start : start + rows] = matrix[start : start + rows].double() @ weights
    return left


def gram_matrix(tall: torch.Tensor) -> torch.Tensor:
    """M^T M (n x n) in float64, accumulated over float64 row blocks."""
    n = tall.shape[1]
    gram = torch.zeros(n, n, dtype=torch.float64, device=tall.device)
    rows = block_rows(n)
    for start in range(0, tall.shape[0], rows):
        block = tall[start : start + rows].double()
        gram += block.T @ block
    return gram


def _gram_left(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Left factor from eigh of the float64 Gram matrix of the tall orientation, or None when the spectrum it shows
    has a condition number above GRAM_MAX_CONDITION (then the caller takes the QR route)."""
    m, n = matrix.shape
    eigenvalues, vectors = torch.linalg.eigh(gram_matrix(matrix if m >= n else matrix.T))
    singular, right = eigenvalues.flip(0).clamp_min(0).sqrt(), vectors.flip(1)
    if not float(singular[-1]) * GRAM_MAX_CONDITION >= float(singular[0]):
        return None
    if m < n:  # a wide M's Gram matrix M M^T has M's left singular vectors as eigenvectors
        return right.float(), singular
    return left_from_right(matrix, right, singular), singular


def _qr_left(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left factor via float64 TSQR of the tall orientation, SVD of its n x n R, then U = M V Sigma^-1 in row blocks.

    A wide M's left vectors are R's right singular vectors (M^T = Q R), so only tall matrices need the U pass.
    """
    m, n = matrix.shape
    _, singular, vh = torch.linalg.svd(tall_r_factor(matrix if m >= n else matrix.T))
    rank = numerical_rank(singular, (m, n))
    if m < n:
        return vh[:rank].T.float(), singular[:rank]
    return left_from_right(matrix, vh[:rank].T, singular[:rank]), singular[:rank]


def _svd_left(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left factor via float64 LAPACK SVD of the tall orientation (a whole float64 copy of the matrix)."""
    m, n = matrix.shape
    if m >= n:
        left, singular, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    else:
        _, singular, vh = torch.linalg.svd(matrix.T.double(), full_matrices=False)
        left = vh.T
    rank = numerical_rank(singular, (m, n))
    return left[:, :rank].float(), singular[:rank]


def left_singular(matrix: torch.Tensor, *, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors U (m x rank, float32) and the rank singular values (float64), descending, computed in float64.

    rank is the numerical rank (sigma > sigma_max * max(m, n) * eps_float64); the directions below it are numerically
    zero and left out, never replaced. A zero matrix gives an empty basis (m x 0). method: "qr" (chunked float64
    Householder QR, SVD of R, U = M V Sigma^-1), "svd" (float64 LAPACK SVD), "gram" (eigh of the float64 Gram matrix
    when its spectrum shows a condition number <= GRAM_MAX_CONDITION, else qr), or "auto" (see resolve_method).
    """
    matrix = as_matrix(matrix)
    m, n = matrix.shape
    method = resolve_method(method, (m, n))
    if not torch.any(matrix):
        return matrix.new_zeros(m, 0, dtype=torch.float32), matrix.new_zeros(0, dtype=torch.float64)
    if method == "gram":
        found = _gram_left(matrix)
        if found is not None:
            return found
        method = "qr"
    return _qr_left(matrix) if method == "qr" else _svd_left(matrix)


def seeded_gaussian_columns(m: int, width: int, k: int, seed: int, *, dtype: torch.dtype = torch.float32,
                            rows: int | None = None) -> torch.Tensor:
    """The first k columns of torch.randn(m, width, float64) drawn from a CPU generator seeded with seed, cast to dtype.

    Drawn in row blocks of a multiple of 16 entries (torch fills normals 16 at a time, so the blocks continue one
    stream: the same bits as one draw) without the m x width float64 temporary.
    """
    generator = torch.Generator().manual_seed(seed)
    step = 16 // math.gcd(width, 16)  # rows per 16-entry multiple
    rows = rows or QR_BLOCK_ELEMENTS // max(width, 1)
    rows = max(step, rows // step * step)
    if m * width < 32 or rows >= m:
        return torch.randn(m, width, generator=generator, dtype=torch.float64)[:, :k].to(dtype)
    out = torch.empty(m, k, dtype=dtype)
    start = 0
    while start < m:
        count = min(rows, m - start)
        if (m - start - count) * width < 16:  # a remainder below 16 entries joins this, the last, block
            count = m - start
        out[start : start + count] = torch.randn(count, width, generator=generator, dtype=torch.float64)[:, :k]
        start += count
    return out


def haar_frame(m: int, k: int, seed: int, *, width: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """k orthonormal columns spanning a Haar-random k-dim subspace of R^m.

    Frames drawn with the same seed and width are nested in k (the first k columns of one random frame).
    """
    width = k if width is None else width
    if not k <= width <= m:
        raise ValueError(f"cannot draw {k} of {width} orthonormal columns in R^{m}")
    if k == 0:
        return torch.zeros(m, 0, dtype=dtype)
    q, r = torch.linalg.qr(seeded_gaussian_columns(m, width, k, seed, dtype=dtype))
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return q * signs


def random_order(r: int, seed: int) -> torch.Tensor:
    """A seeded permutation of range(r): its first k entries choose k of r columns uniformly (nested in k)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(r, generator=generator)


def parallel_part(basis: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta as a float32 matrix, P delta) with P = B B^T the projector onto the basis columns (zero for an empty basis)."""
    matrix = as_matrix(delta).float()
    basis = basis.to(matrix.dtype)
    parallel = basis @ (basis.T @ matrix) if basis.shape[1] else torch.zeros_like(matrix)
    return matrix, parallel


def add_update(weight: torch.Tensor, update: torch.Tensor, *, consume: bool = False) -> torch.Tensor:
    """W.float() + the update, cast once to the stored dtype of W.

    consume: add W into a float32 update's own buffer, chunk by chunk (the same bits, no whole float32 copy of W).
    """
    if not (consume and update.dtype == torch.float32 and update.is_contiguous()):
        return (weight.float() + update.float()).to(weight.dtype)
    for out, part in flat_chunks(update, weight.reshape(update.shape)):
        out += part.float()
    return update.to(weight.dtype)


def coefficient_energies(frame: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """e_i = ||f_i^T delta||^2 for each frame column (float64): cumulative sums give parallel energy for every k."""
    if frame.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    return row_energies(add_coefficients(None, frame, delta))


def selection_union(selections: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The sorted union of the column indices that the selections use."""
    return torch.unique(torch.cat([idx.reshape(-1).long() for idx in selections.values()]))


def take_columns(basis: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """basis[:, union]: a view when union is the prefix 0..u-1, else a gathered copy."""
    used = int(union.numel())
    if used == 0 or int(union[-1]) == used - 1:
        return basis[:, :used]
    return basis[:, union.to(basis.device)]


def split_selections(energies: torch.Tensor, union: torch.Tensor, width: int,
                     selections: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each selection's coefficient energies, from those of the union's columns (width: the basis' column count)."""
    position = torch.full((width,), -1, dtype=torch.long)
    position[union] = torch.arange(int(union.numel()))
    energies = energies.cpu()
    return {key: energies[position[idx.reshape(-1).long()]] for key, idx in selections.items()}


def cumulative_energies(energies: torch.Tensor, ks: Iterable[int]) -> list[float]:
    """sum_{i<k} e_i for each k: the parallel energy of the first k frame columns from their coefficient energies."""
    cumulative = torch.cumsum(energies, dim=0)
    return [float(cumulative[k - 1]) if k > 0 else 0.0 for k in ks]


def parallel_energies(frame: torch.Tensor, delta: torch.Tensor, ks: Iterable[int]) -> list[float]:
    """||P_k delta||_F^2 for each k, with P_k the projector onto the first k frame columns."""
    return cumulative_energies(coefficient_energies(frame, delta), ks)


def energy_kept(kept_energy: float, total_energy: float) -> float:
    """E = sum ||delta_tilde||^2 / sum ||delta||^2 (nan when the update is zero)."""
    return kept_energy / total_energy if total_energy > 0 else float("nan")


def cosine_from_parts(dot: float, norm_sq_a: float, norm_sq_b: float) -> float:
    """<a,b> / (||a|| ||b||) from pooled parts (nan when either is zero)."""
    if norm_sq_a <= 0 or norm_sq_b <= 0:
        return float("nan")
    return dot / math.sqrt(norm_sq_a * norm_sq_b)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors over all entries."""
    return cosine_from_parts(inner(a, b), frobenius_sq(a), frobenius_sq(b))


def energy_basis(matrix: torch.Tensor, eta: float, *, method: str = "auto") -> torch.Tensor:
    """Q: the first k left singular vectors, k the smallest rank holding eta of the exact ||M||_F^2."""
    left, singular = left_singular(matrix, method=method)
    k = rank_from_energy(singular, eta, frobenius_sq(as_matrix(matrix)))
    return left[:, :k]


def mso(basis_a: torch.Tensor, basis_b: torch.Tensor) -> float:
    """Mode Subspace Overlap ||Q_a^T Q_b||_F^2 / min(k_a, k_b): the mean cos^2 of the principal angles."""
    k = min(basis_a.shape[1], basis_b.shape[1])
    if k == 0:
        return float("nan")
    cross = basis_a.double().T @ basis_b.double()
    return float((cross**2).sum()) / k


def mso_random_baseline(k_a: int, k_b: int, d: int) -> float:
    """Expected MSO of independent Haar subspaces of dims k_a, k_b in R^d: max(k_a, k_b) / d."""
    if min(k_a, k_b) == 0 or d <= 0:
        return float("nan")
    return max(k_a, k_b) / d


def principal_cosines(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between two column spans, descending."""
    return torch.linalg.svdvals(basis_a.double().T @ basis_b.double())


def second_moment_spectrum(second_moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and singular values of A^T (d x n) from its d x d second moment A^T A, descending."""
    eigenvalues, vectors = torch.linalg.eigh(second_moment.double())
    return vectors.flip(1), eigenvalues.flip(0).clamp_min(0).sqrt()


def second_moment_basis(second_moment: torch.Tensor, eta: float) -> torch.Tensor:
    """Q from a second moment matrix: eigenvectors holding eta of its trace (= the exact ||A||_F^2)."""
    vectors, singular = second_moment_spectrum(second_moment)
    k = rank_from_energy(singular, eta, float(torch.trace(second_moment.double())))
    return vectors[:, :k]


def overlap_table(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """T[i-1, j-1] = ||Q_a[:, :i]^T Q_b[:, :j]||_F^2 for every i, j: one product serves every pair of ranks (float64)."""
    if basis_a.shape[1] == 0 or basis_b.shape[1] == 0:
        return torch.zeros(basis_a.shape[1], basis_b.shape[1], dtype=torch.float64)
    dtype = torch.promote_types(basis_a.dtype, basis_b.dtype)
    cross = (basis_a.to(dtype).T @ basis_b.to(dtype)).double()
    return (cross**2).cumsum(0).cumsum(1).cpu()


def mso_from_table(table: torch.Tensor, k_a: int, k_b: int) -> float:
    """MSO of the first k_a and k_b columns from an overlap_table (nan when either is empty)."""
    k = min(k_a, k_b)
    if k == 0:
        return float("nan")
    return float(table[k_a - 1, k_b - 1]) / k


def centered_second_moment(second_moment: torch.Tensor, total: torch.Tensor, count: int) -> torch.Tensor:
    """(A - mean)^T (A - mean) from A^T A, the column sums of A and the row count n (float64)."""
    if count <= 0:
        raise ValueError("a centred second moment needs at least one row")
    total = total.double()
    return second_moment.double() - torch.outer(total, total) / count
