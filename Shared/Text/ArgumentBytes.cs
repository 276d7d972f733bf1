using System.Text;

namespace Rbs.Shared.Text;

/// <summary>
/// Command-line arguments are bytes, not text: bazel passes any byte sequence to a binary it runs, and a remote bazel
/// must too. In memory an argument stays a string in which every byte that is not part of valid UTF-8 is the lone
/// surrogate U+DC80 + byte (Python's "surrogateescape"): valid UTF-8 decodes as usual, and encoding gives back the exact
/// bytes. jbazel decodes its argv this way; the agent encodes the tool's argv this way. On the wire
/// (<c>StartCommand.raw_args</c>) the bytes travel as they are.
/// </summary>
internal static class ArgumentBytes
{
    private const char FirstEscape = '\uDC80';
    private const char LastEscape = '\uDCFF';

    /// <summary>The bytes as a string: valid UTF-8 as text, every other byte b as U+DC00 + b.</summary>
    public static string Decode(ReadOnlySpan<byte> bytes)
    {
        var text = new StringBuilder(bytes.Length);
        while (!bytes.IsEmpty)
        {
            var status = System.Text.Rune.DecodeFromUtf8(bytes, out var rune, out var consumed);
            if (status == System.Buffers.OperationStatus.Done)
            {
                text.Append(rune.ToString());
            }
            else
            {
                // Invalid or truncated: each byte of the bad sequence is escaped on its own (consumed >= 1).
                for (var i = 0; i < consumed; i++)
                {
                    text.Append((char)(0xDC00 + bytes[i]));
                }
            }

            bytes = bytes[consumed..];
        }

        return text.ToString();
    }

    /// <summary>The exact bytes of a string <see cref="Decode"/> made; any other lone surrogate becomes U+FFFD.</summary>
    public static byte[] Encode(string value)
    {
        if (!HasEscapes(value))
        {
            return Encoding.UTF8.GetBytes(value);
        }

        var bytes = new List<byte>(value.Length + 8);
        Span<byte> scratch = stackalloc byte[4];
        for (var i = 0; i < value.Length; i++)
        {
            var c = value[i];
            if (c is >= FirstEscape and <= LastEscape)
            {
                bytes.Add((byte)(c - 0xDC00));
                continue;
            }

            var rune = char.IsHighSurrogate(c) && i + 1 < value.Length && char.IsLowSurrogate(value[i + 1])
                ? new System.Text.Rune(c, value[++i])
                : System.Text.Rune.TryCreate(c, out var single) ? single : System.Text.Rune.ReplacementChar;
            var written = rune.EncodeToUtf8(scratch);
            for (var j = 0; j < written; j++)
            {
                bytes.Add(scratch[j]);
            }
        }

        return [.. bytes];
    }

    /// <summary>Whether the string holds escaped bytes, i.e. it is not valid UTF-8 as bytes.</summary>
    public static bool HasEscapes(string value)
    {
        foreach (var c in value)
        {
            if (c is >= FirstEscape and <= LastEscape)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>The argument as text for a protobuf string field or a log: each escaped byte is U+FFFD.</summary>
    public static string ForDisplay(string value) => HasEscapes(value) ? Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(value)) : value;
}
