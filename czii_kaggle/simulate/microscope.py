"""Microscope and reconstruction physics: CTF, missing wedge, noise, the reconstruction's filter.

One ``rfftn`` / ``irfftn`` pair applies it all (:func:`apply_microscope`); a median
filter or nonlinear diffusion, when a look asks for one, runs in real space after it.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.fft

_ELECTRON_VOLTAGE_V = 300e3
_SPHERICAL_ABERRATION_A = 2.7e7  # Cs = 2.7 mm, Titan Krios

#: CTF handling: ``flipped`` |CTF|, ``unflipped`` the signed CTF, ``none`` the envelope alone.
CTF_MODES = ("flipped", "unflipped", "none")
#: Reconstruction filters (see :func:`apply_microscope`).
FILTERS = ("none", "gaussian", "median", "lowpass", "anisotropic")
#: Filters a look takes only where its spec names them (``look.EXTRA_CHOICES``): ``diffusion``,
#: edge-preserving nonlinear diffusion (:func:`nonlinear_diffusion`), and ``wiener``, the locally
#: adaptive Wiener filter (:func:`adaptive_wiener`).
EXTRA_FILTERS = ("diffusion", "wiener")


def electron_wavelength_A(voltage_V: float = _ELECTRON_VOLTAGE_V) -> float:
    """Relativistic electron wavelength in Angstrom (0.0197 A at 300 kV)."""
    return 12.2639 / math.sqrt(voltage_V + 0.97845e-6 * voltage_V**2)


def ctf_envelope(
    k_A: np.ndarray,
    defocus_A: float,
    amplitude_contrast: float = 0.07,
    bfactor_A2: float = 500.0,
    mode: str = "flipped",
) -> np.ndarray:
    """Phase-flipped CTF amplitude times the B-factor envelope (or the signed CTF, or no CTF: ``mode``).

    Parameters
    ----------
    k_A : ndarray
        Spatial frequency in 1/Angstrom.
    defocus_A : float
        Underfocus in Angstrom (2-4 um = 20000-40000 A).
    amplitude_contrast : float
        Amplitude-contrast fraction.
    bfactor_A2 : float
        B-factor in Angstrom^2: envelope ``exp(-B k^2 / 4)``.
    mode : str
        ``flipped`` (phase-flipped: the absolute value), ``unflipped`` (the signed CTF: contrast
        reverses in alternate Thon rings, positive at low frequency for underfocus) or
        ``none`` (1: a reconstruction with the CTF fully corrected; envelope only).

    Returns
    -------
    ndarray float32, like ``k_A``
        ``|sqrt(1 - A^2) sin(chi) + A cos(chi)| exp(-B k^2 / 4)``, with
        ``chi = pi lambda dz k^2 - pi/2 Cs lambda^3 k^4`` at 300 kV, Cs 2.7 mm.
    """
    k2 = np.asarray(k_A, np.float64) ** 2
    lam = electron_wavelength_A()
    chi = np.pi * lam * defocus_A * k2 - 0.5 * np.pi * _SPHERICAL_ABERRATION_A * lam**3 * k2 * k2
    ctf = math.sqrt(1 - amplitude_contrast**2) * np.sin(chi) + amplitude_contrast * np.cos(chi)
    if mode == "flipped":
        ctf = np.abs(ctf)
    elif mode == "none":
        ctf = np.ones_like(ctf)
    elif mode != "unflipped":
        raise ValueError(f"CTF mode must be one of {CTF_MODES}, not {mode!r}")
    return (ctf * np.exp(-0.25 * bfactor_A2 * k2)).astype(np.float32)


def wedge_mask(
    shape_vox: tuple[int, int, int], tilt_range_deg: float = 60.0
) -> np.ndarray:
    """Sampled Fourier region of an ``rfftn`` spectrum (z, y, x half axis), bool.

    Tilt axis y, beam z: ``|k_z| <= |k_x| tan(tilt_range)`` is sampled; the rest is
    the missing wedge.
    """
    nz, ny, nx = shape_vox
    kz = np.abs(np.fft.fftfreq(nz))[:, None, None]
    kx = np.fft.rfftfreq(nx)[None, None, :]
    return np.broadcast_to(kz <= kx * math.tan(math.radians(tilt_range_deg)) + 1e-12, (nz, ny, nx // 2 + 1))


def apply_microscope(
    density: np.ndarray,
    voxel_size_A: float,
    rng: np.random.Generator,
    defocus_A: float,
    noise_sigma: float,
    post_noise_sigma: float,
    structure_sigma: float = 0.0,
    tilt_range_deg: float = 60.0,
    amplitude_contrast: float = 0.07,
    bfactor_A2: float = 500.0,
    denoise_sigma_vox: float = 1.0,
    ctf_mode: str = "flipped",
    noise_exponent: float = 0.0,
    filter: str = "gaussian",
    anisotropy: float = 1.0,
) -> np.ndarray:
    """Image a density volume: one ``rfftn``/``irfftn`` pair does it all.

    In Fourier space,
    ``T(k) = G(k) [ W(k) (-CTF(k) E(k) (S(k) + Ns(k)) + N1(k)) + N2(k) ]``:
    ``S`` the density, ``Ns`` white density fluctuations of std ``structure_sigma``,
    ``W`` the missing-wedge mask, ``CTF E`` the CTF (``ctf_mode``) and envelope, ``N1``
    noise of std ``noise_sigma`` (it carries the wedge like the noise of a real
    reconstruction; coloured ``f^-noise_exponent`` in power, same total variance), ``N2``
    white noise of std ``post_noise_sigma`` (no wedge), ``G`` the reconstruction's filter.
    The independent noises are drawn as one Gaussian field of the summed variance,
    directly in Fourier space, plane by plane.

    Parameters
    ----------
    density : ndarray float32 (z, y, x)
        Density (protein ~ 1); consumed (its memory may be reused).
    voxel_size_A : float
        Voxel size in Angstrom.
    rng : numpy Generator
        Noise source.
    defocus_A : float
        Underfocus in Angstrom.
    noise_sigma, post_noise_sigma, structure_sigma : float
        Real-space std of the three noises (density units).
    tilt_range_deg, amplitude_contrast, bfactor_A2
        As in :class:`~czii_kaggle.simulate.config.SimConfig`.
    denoise_sigma_vox : float
        Size of the filter in voxels: Gaussian sigma (``gaussian``, ``anisotropic`` in x-y),
        half the cut-off period of the low-pass (``lowpass``: cut-off ``0.5 / (2 size)``
        cycles/voxel, 8th-order Butterworth), number of 3-tap median passes (``median``, rounded),
        a quarter of the diffusion steps (``diffusion``: ``round(4 size)`` steps), the half-width of
        the adaptive Wiener filter's window (``wiener``: ``2 round(size) + 1`` voxels a side).
    ctf_mode : str
        ``flipped``, ``unflipped`` or ``none`` (:func:`ctf_envelope`).
    noise_exponent : float
        Colour of ``N1``: power ~ ``f^-noise_exponent`` (0 white).
    filter : str
        ``none``, ``gaussian``, ``median`` (separable 3-tap median in real space),
        ``lowpass``, ``anisotropic`` (Gaussian with z sigma ``anisotropy`` times x-y's) or
        ``diffusion`` (:func:`nonlinear_diffusion`) or ``wiener`` (:func:`adaptive_wiener`), these two
        in real space after the rest.
    anisotropy : float
        z / x-y sigma ratio of the ``anisotropic`` filter.

    Returns
    -------
    ndarray float32 (z, y, x)
        The tomogram: dense = dark (negative).
    """
    if filter not in FILTERS + EXTRA_FILTERS:
        raise ValueError(f"filter must be one of {FILTERS + EXTRA_FILTERS}, not {filter!r}")
    shape = density.shape
    nz, ny, nx = shape
    spec = scipy.fft.rfftn(density, workers=-1, overwrite_x=True)
    del density
    fz = np.fft.fftfreq(nz).astype(np.float32)  # cycles / voxel
    fy = np.fft.fftfreq(ny).astype(np.float32)
    fy2 = (fy**2)[:, None]
    fx = np.fft.rfftfreq(nx).astype(np.float32)
    fx2 = (fx**2)[None, :]
    # radial look-up table: CTF E(k), the radial filter G(k) and the noise colour, k in cycles/voxel
    n_lut = 4096
    f_max = math.sqrt(3) * 0.5 + 1e-3
    f_lut = np.linspace(0.0, f_max, n_lut)
    size = float(denoise_sigma_vox)
    if filter == "gaussian":
        radial = np.exp(-2 * np.pi**2 * size**2 * f_lut**2)
    elif filter == "lowpass":
        radial = 1.0 / np.sqrt(1.0 + (f_lut / (0.25 / max(size, 0.5))) ** 16)
    else:  # none, median, diffusion and wiener (real space), anisotropic (separable, per plane)
        radial = np.ones_like(f_lut)
    ctf = ctf_envelope(f_lut / voxel_size_A, defocus_A, amplitude_contrast, bfactor_A2, ctf_mode).astype(np.float64)
    colour = np.ones_like(f_lut)
    if noise_exponent:
        f_floor = 1.0 / max(shape)
        colour = np.maximum(f_lut, f_floor) ** (-0.5 * noise_exponent)
        # same total variance as white noise: normalise the mean power over the sampled ball (density ~ f^2)
        ball = f_lut <= 0.5
        colour /= math.sqrt(np.sum(colour[ball] ** 2 * f_lut[ball] ** 2) / np.sum(f_lut[ball] ** 2))
    lut_signal = (-ctf * radial).astype(np.float32)
    norm = math.sqrt(nz * ny * nx / 2.0)  # unnormalised rfftn of unit white noise
    lut_noise_in = (
        norm * radial * np.sqrt((noise_sigma * colour) ** 2 + post_noise_sigma**2 + (structure_sigma * ctf) ** 2)
    ).astype(np.float32)
    lut_noise_out = (norm * radial * post_noise_sigma).astype(np.float32)
    lut_scale = np.float32((n_lut - 1) / f_max)
    tan_t = np.float32(math.tan(math.radians(tilt_range_deg)))
    aniso = filter == "anisotropic"
    if aniso:
        g_yx = np.exp(-2 * np.pi**2 * size**2 * (fy2 + fx2)).astype(np.float32)
        g_z = np.exp(-2 * np.pi**2 * (size * anisotropy) ** 2 * fz**2).astype(np.float32)
    for i in range(nz):
        f2 = fy2 + fx2 + fz[i] ** 2
        np.sqrt(f2, out=f2)
        f2 *= lut_scale
        idx = f2.astype(np.int32)
        inside = (fx * tan_t >= abs(fz[i]) - 1e-7)[None, :]  # (1, nxh) sampled region
        h_signal = np.where(inside, lut_signal[idx], np.float32(0.0))
        h_noise = np.where(inside, lut_noise_in[idx], lut_noise_out[idx])
        if aniso:
            g = g_yx * g_z[i]
            h_signal *= g
            h_noise *= g
        noise = rng.standard_normal((ny, 2 * len(fx)), dtype=np.float32).view(np.complex64)
        noise *= h_noise
        plane = spec[i]
        plane *= h_signal
        plane += noise
    vol = scipy.fft.irfftn(spec, s=shape, workers=-1, overwrite_x=True).astype(np.float32, copy=False)
    if filter == "median":
        for _ in range(max(1, int(round(size)))):
            median3_separable(vol)
    elif filter == "diffusion":
        nonlinear_diffusion(vol, steps=max(1, int(round(4 * size))))
    elif filter == "wiener":
        vol = adaptive_wiener(vol, 2 * max(1, int(round(size))) + 1)
    return vol


def adaptive_wiener(volume: np.ndarray, window_vox: int) -> np.ndarray:
    """The locally adaptive Wiener filter (Lee's filter): ``m + max(v - n, 0) / max(v, n) * (x - m)``.

    ``m`` and ``v`` are the mean and variance over a cube of ``window_vox`` voxels a side around each
    voxel, ``n`` the mean of ``v`` over the volume (the noise power, as :func:`scipy.signal.wiener`
    takes it): where the local variance is no more than the noise's the voxel becomes its local mean,
    where it is far above (particles, edges) the voxel is kept. A filter whose strength follows the
    content, linear in the volume's scale (``f(a x) = a f(x)``) and unlike any filter of the spectrum.
    (Lee 1980, IEEE TPAMI 2:165.) Returns a new float32 volume.
    """
    from scipy.ndimage import uniform_filter

    x = np.asarray(volume, np.float32)
    mean = uniform_filter(x, window_vox, mode="reflect")
    var = uniform_filter(x * x, window_vox, mode="reflect")
    var -= mean * mean
    np.maximum(var, 0.0, out=var)
    noise = np.float32(var.mean())
    gain = np.maximum(var - noise, 0.0)
    gain /= np.maximum(var, noise) + np.float32(1e-30)
    out = x - mean  # float32 throughout: uniform_filter keeps its input's dtype
    out *= gain
    out += mean
    return out


def nonlinear_diffusion(volume: np.ndarray, steps: int, k_factor: float = 1.5, dt: float = 1.0 / 7.0) -> None:
    """Edge-preserving (Perona-Malik) diffusion in place, the nonlinear denoising of cryo-ET tomograms.

    Each step moves intensity between face neighbours by ``dt * g(d) * d``, ``d`` their difference and
    ``g(d) = 1 / (1 + (d / K)^2)`` the conductance: small differences (noise) diffuse, large ones
    (edges) stay. ``K = k_factor`` times the median absolute neighbour difference of the input, so the
    result does not depend on the volume's scale. ``dt <= 1/6`` keeps the explicit scheme stable in 3D.
    Unlike every linear filter, it cannot be undone or evened out by a filter of the spectrum.
    (Perona and Malik 1990, IEEE TPAMI 12:629; for tomograms Frangakis and Hegerl 2001, J Struct Biol
    135:239.)
    """
    k = np.float32(k_factor * float(np.median(np.abs(np.diff(volume[::4, ::4], axis=-1)))) + 1e-12)
    dt = np.float32(dt)
    for _ in range(int(steps)):
        for axis in range(3):
            n = volume.shape[axis]
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
            d = np.subtract(volume[tuple(hi)], volume[tuple(lo)])
            g = d / k
            np.square(g, out=g)
            g += np.float32(1.0)
            np.divide(d, g, out=d)
            d *= dt
            volume[tuple(lo)] += d
            volume[tuple(hi)] -= d


def median3_separable(volume: np.ndarray) -> None:
    """A 3-tap median along z, then y, then x, in place (a cheap stand-in for a 3 x 3 x 3 median).

    ``median(a, b, c) = max(min(a, b), min(max(a, b), c))``; edge voxels keep their value.
    """
    for axis in range(3):
        other = (axis + 1) % 3
        for start in range(0, volume.shape[other], 64):  # in slabs: a few slab-sized temporaries
            sl = [slice(None)] * 3
            sl[other] = slice(start, start + 64)
            v = np.moveaxis(volume[tuple(sl)], axis, 0)
            if v.shape[0] < 3:
                continue
            a, c = v[:-2], v[2:]
            lo = np.minimum(a, v[1:-1])
            hi = np.maximum(a, v[1:-1])
            np.minimum(hi, c, out=hi)
            np.maximum(lo, hi, out=lo)
            v[1:-1] = lo


def _mean_std(volume: np.ndarray) -> tuple[float, float]:
    """Mean and std of a float32 volume, accumulated plane by plane (fast, no float64 copy)."""
    s1 = s2 = 0.0
    for plane in volume:
        flat = plane.reshape(-1)
        s1 += float(flat.sum(dtype=np.float64))
        s2 += float(np.dot(flat, flat))
    n = volume.size
    mean = s1 / n
    return mean, math.sqrt(max(s2 / n - mean * mean, 0.0))


def add_gradient(volume: np.ndarray, rng: np.random.Generator, amplitude: float) -> None:
    """Add a slow random quadratic intensity trend of peak amplitude ~``amplitude`` in place."""
    nz, ny, nx = volume.shape
    z = np.linspace(-1, 1, nz, dtype=np.float32)
    y = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
    c = rng.normal(0.0, 1.0, 7).astype(np.float32) * np.float32(amplitude / 3.0)
    in_plane = c[0] * x + c[1] * y + c[3] * x * x + c[4] * y * y + c[5] * x * y  # (ny, nx)
    for i in range(nz):
        volume[i] += in_plane + (c[2] * z[i] + c[6] * z[i] * x)
