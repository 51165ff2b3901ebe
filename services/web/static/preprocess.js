/* The in-browser twin of shared.images.poster_pixels: decode, EXIF orientation, first frame,
 * transparency composited on white, then Pillow's BILINEAR resize to a square, ported line by line
 * from Pillow's Resample.c (antialiased triangle filter, 22-bit fixed-point coefficients, horizontal
 * pass then vertical pass, each rounded to 8 bits), so the browser feeds the models the same pixels
 * as the server. Exposed as window.PosterPixels (and module.exports for Node).
 */
(function (root) {
  "use strict";

  const PRECISION_BITS = 32 - 8 - 2;  // Resample.c
  const ONE = 1 << PRECISION_BITS;

  function bilinearFilter(x) {
    if (x < 0) x = -x;
    return x < 1 ? 1 - x : 0;
  }

  /* precompute_coeffs + normalize_coeffs_8bpc: for each output pixel, the first input pixel,
   * how many input pixels it reads, and their integer weights. */
  function coefficients(inSize, outSize) {
    const scale = inSize / outSize;
    const filterScale = Math.max(scale, 1.0);
    const support = 1.0 * filterScale;  // the bilinear filter's support is 1
    const kSize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const weights = new Int32Array(outSize * kSize);
    const row = new Float64Array(kSize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const ss = 1.0 / filterScale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let total = 0.0;
      for (let x = 0; x < xmax; x++) {
        const w = bilinearFilter((x + xmin - center + 0.5) * ss);
        row[x] = w;
        total += w;
      }
      for (let x = 0; x < kSize; x++) {
        let w = x < xmax ? row[x] : 0;
        if (x < xmax && total !== 0.0) w /= total;
        weights[xx * kSize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
      }
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { bounds, weights, kSize };
  }

  function clip8(value) {
    if (value >= ONE * 256) return 255;
    if (value <= 0) return 0;
    return Math.floor(value / ONE);
  }

  /* ImagingResampleHorizontal_8bpc over rows [firstRow, firstRow + rows) of an RGB image. */
  function resampleHorizontal(src, width, firstRow, rows, outWidth, c) {
    const out = new Uint8Array(outWidth * rows * 3);
    for (let yy = 0; yy < rows; yy++) {
      const base = (yy + firstRow) * width * 3;
      for (let xx = 0; xx < outWidth; xx++) {
        const xmin = c.bounds[xx * 2], xmax = c.bounds[xx * 2 + 1], k = xx * c.kSize;
        let s0 = ONE >> 1, s1 = ONE >> 1, s2 = ONE >> 1;
        for (let x = 0; x < xmax; x++) {
          const p = base + (x + xmin) * 3, w = c.weights[k + x];
          s0 += src[p] * w; s1 += src[p + 1] * w; s2 += src[p + 2] * w;
        }
        const o = (yy * outWidth + xx) * 3;
        out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2);
      }
    }
    return out;
  }

  /* ImagingResampleVertical_8bpc. */
  function resampleVertical(src, width, outHeight, c, rowShift) {
    const out = new Uint8Array(width * outHeight * 3);
    for (let yy = 0; yy < outHeight; yy++) {
      const ymin = c.bounds[yy * 2] - rowShift, ymax = c.bounds[yy * 2 + 1], k = yy * c.kSize;
      for (let xx = 0; xx < width; xx++) {
        let s0 = ONE >> 1, s1 = ONE >> 1, s2 = ONE >> 1;
        for (let y = 0; y < ymax; y++) {
          const p = ((y + ymin) * width + xx) * 3, w = c.weights[k + y];
          s0 += src[p] * w; s1 += src[p + 1] * w; s2 += src[p + 2] * w;
        }
        const o = (yy * width + xx) * 3;
        out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2);
      }
    }
    return out;
  }

  /* Pillow's Image.resize((w, h), BILINEAR, reducing_gap=None) of packed RGB bytes
   * (ImagingResampleInner of Pillow 13). */
  function resizeBilinear(rgb, width, height, outWidth, outHeight) {
    const needHorizontal = width !== outWidth;
    const needVertical = height !== outHeight;
    if (!needHorizontal && !needVertical) return Uint8Array.from(rgb);
    // "If height is being scaled down more than twice the amount the width is, run the vertical
    // pass first": the order changes the 8-bit rounding between the passes, so it must match.
    const horizontalFirst = !((height - outHeight) > 0 && (height - outHeight) > (width - outWidth) * 2);
    const vertical = needVertical ? coefficients(height, outHeight) : null;
    const horizontal = needHorizontal ? coefficients(width, outWidth) : null;
    let pixels = rgb;
    if (horizontalFirst) {
      let firstRow = 0, rows = height;
      if (vertical) {  // only the rows the vertical pass reads go through the horizontal pass
        firstRow = vertical.bounds[0];
        rows = vertical.bounds[outHeight * 2 - 2] + vertical.bounds[outHeight * 2 - 1] - firstRow;
      }
      if (horizontal) pixels = resampleHorizontal(pixels, width, firstRow, rows, outWidth, horizontal);
      if (vertical) pixels = resampleVertical(pixels, outWidth, outHeight, vertical, horizontal ? firstRow : 0);
    } else {
      if (vertical) pixels = resampleVertical(pixels, width, outHeight, vertical, 0);
      if (horizontal) pixels = resampleHorizontal(pixels, width, 0, outHeight, outWidth, horizontal);
    }
    return pixels;
  }

  /* Image.alpha_composite(white, image).convert("RGB") for RGBA bytes (AlphaComposite.c, 7-bit). */
  function compositeOnWhite(rgba, count) {
    const rgb = new Uint8Array(count * 3);
    const SHIFT = 7;
    for (let i = 0; i < count; i++) {
      const a = rgba[i * 4 + 3];
      for (let ch = 0; ch < 3; ch++) {
        const s = rgba[i * 4 + ch];
        let v;
        if (a === 0) v = 255;
        else if (a === 255) v = s;
        else {
          const outA255 = a * 255 + 255 * (255 - a);
          const coef1 = Math.floor((a * 255 * 255 * (1 << SHIFT)) / outA255);
          const coef2 = 255 * (1 << SHIFT) - coef1;
          const t = s * coef1 + 255 * coef2 + (0x80 << SHIFT);
          v = (((t >> 8) + t) >> 8) >> SHIFT;
        }
        rgb[i * 3 + ch] = v;
      }
    }
    return rgb;
  }

  /* Decoded poster as packed RGB: first frame, EXIF orientation applied, no colour conversion. */
  async function decodePoster(blob) {
    const bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none",
    });
    const width = bitmap.width, height = bitmap.height;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const data = context.getImageData(0, 0, width, height).data;
    return { rgb: compositeOnWhite(data, width * height), width, height };
  }

  /* shared.images.poster_pixels(data, size) as a Uint8Array of size*size*3. */
  function posterPixels(decoded, size) {
    return resizeBilinear(decoded.rgb, decoded.width, decoded.height, size, size);
  }

  const api = { coefficients, resizeBilinear, compositeOnWhite, decodePoster, posterPixels };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  root.PosterPixels = api;
})(typeof window !== "undefined" ? window : globalThis);
