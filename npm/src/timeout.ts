// Bounded waits for network requests: a Hub that accepts a request and then says nothing
// cannot hang a load.

/** How long a request may go without progress (no answer, no body bytes) by default. */
export const IDLE_TIMEOUT_MS = 60_000;

/**
 * An AbortSignal that fires when `outer` does or when `poke()` has not been called for `ms`:
 * a Hub that accepts a request and then says nothing cannot hang a load.
 */
export function idleSignal(ms: number, outer?: AbortSignal): { signal: AbortSignal; poke(): void; done(): void } {
  const ctl = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const onAbort = () => ctl.abort(outer?.reason);
  if (outer?.aborted) ctl.abort(outer.reason);
  else outer?.addEventListener('abort', onAbort, { once: true });
  const poke = () => {
    clearTimeout(timer);
    timer = setTimeout(() => ctl.abort(new Error(`no data for ${ms / 1000} s`)), ms);
  };
  poke();
  return {
    signal: ctl.signal,
    poke,
    done() {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onAbort);
    },
  };
}
