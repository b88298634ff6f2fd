/**
 * Sets `key` on `o` as an own, enumerable property, whatever the key. Plain assignment
 * treats a key named `__proto__` as the object's prototype: a user's `{"__proto__": "x"}`
 * in an environment or a tag map would vanish without a word (or, with an object value,
 * change what every other key reads).
 */
export function putOwn<V>(o: Record<string, V>, key: string, value: V): void {
  if (key === '__proto__') Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
  else o[key] = value;
}
