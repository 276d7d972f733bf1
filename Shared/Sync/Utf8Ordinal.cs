namespace Rbs.Shared.Sync;

/// <summary>
/// Orders strings by their UTF-8 bytes (= by code point), the order sync.proto prescribes for manifest
/// paths. string.CompareOrdinal compares UTF-16 code units, which differs for characters above U+FFFF
/// (surrogates, 0xD800-0xDFFF) against U+E000-U+FFFF; those two ranges are swapped before comparing.
/// jbazel sorts its manifest with it and the agent refuses a manifest out of this order: if the two ever disagreed,
/// every sync would fail, so both link this one file. Strings parsed from protobuf are well-formed UTF-16 (no lone
/// surrogates), for which this is exactly code-point order.
/// </summary>
internal sealed class Utf8Ordinal : IComparer<string>
{
    public static Utf8Ordinal Instance { get; } = new();

    public int Compare(string? x, string? y)
    {
        if (ReferenceEquals(x, y))
        {
            return 0;
        }

        if (x is null)
        {
            return -1;
        }

        if (y is null)
        {
            return 1;
        }

        // Vectorized scan to the first difference; only that character pair needs the surrogate fix-up.
        var common = x.AsSpan().CommonPrefixLength(y);
        if (common < x.Length && common < y.Length)
        {
            return Fix(x[common]) - Fix(y[common]);
        }

        return x.Length - y.Length;
    }

    private static int Fix(char c) => c < 0xD800 ? c : c >= 0xE000 ? c - 0x800 : c + 0x2000;
}
