/** Byte streams for uploads: anything an upload accepts, as what fetch can send. */
import type { UploadData } from './file-types.js';

/** A pull-driven web stream over an async iterable: the next chunk is read only when fetch wants it. */
export function iterableToStream(src: AsyncIterable<Uint8Array | string>): ReadableStream<Uint8Array> {
  const it = src[Symbol.asyncIterator]();
  const enc = new TextEncoder();
  return new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      const r = await it.next();
      if (r.done) ctrl.close();
      else ctrl.enqueue(typeof r.value === 'string' ? enc.encode(r.value) : r.value);
    },
    async cancel(reason) {
      await it.return?.(reason);
    },
  }, { highWaterMark: 0 });
}

/** Whole bodies stay bytes (fetch then sends a Content-Length); streams stay streams. */
export function uploadBody(data: UploadData): Uint8Array | ReadableStream<Uint8Array> {
  if (typeof data === 'string') return new TextEncoder().encode(data);
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (typeof ReadableStream !== 'undefined' && data instanceof ReadableStream) return data;
  if (data && typeof (data as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === 'function') {
    return iterableToStream(data as AsyncIterable<Uint8Array>);
  }
  throw new TypeError('upload data must be a string, bytes, a ReadableStream or an async iterable of bytes');
}
