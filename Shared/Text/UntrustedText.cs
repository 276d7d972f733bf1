using System.Globalization;
using System.Text;

namespace Rbs.Shared.Text;

/// <summary>
/// How a server quotes what a client sent (a path, a header, a variable name) in a status message or a log line.
/// Client input has no length limit a server can rely on: a 1 MiB <c>source_path</c> copied into a gRPC status made
/// the reply's headers exceed the client's 64 KiB limit, so the client saw Unavailable instead of InvalidArgument.
/// Every echo of client input therefore goes through <see cref="Echo"/>: at most <see cref="MaxEchoedChars"/>
/// characters, control characters escaped (no forged log lines), and the original length said.
/// </summary>
internal static class UntrustedText
{
    /// <summary>Characters of client input a message quotes; the rest is replaced by its length.</summary>
    public const int MaxEchoedChars = 200;

    /// <summary>
    /// <paramref name="value"/> as a message may quote it: unchanged when short and printable; otherwise its first
    /// <see cref="MaxEchoedChars"/> characters with control characters written as <c>\n</c>, <c>\0</c>, <c>\u001b</c>,
    /// followed by <c>… (N chars)</c> when it was cut.
    /// </summary>
    public static string Echo(string? value)
    {
        if (string.IsNullOrEmpty(value))
        {
            return string.Empty;
        }

        var cut = value.Length > MaxEchoedChars;
        var length = cut ? MaxEchoedChars : value.Length;
        if (cut && char.IsHighSurrogate(value[length - 1]))
        {
            // Never split a surrogate pair: half a character is not valid UTF-16 and would not encode.
            length--;
        }

        if (!cut && !NeedsEscaping(value))
        {
            return value;
        }

        var text = new StringBuilder(length + 24);
        for (var i = 0; i < length; i++)
        {
            var c = value[i];
            switch (c)
            {
                case '\n':
                    text.Append("\\n");
                    break;
                case '\r':
                    text.Append("\\r");
                    break;
                case '\t':
                    text.Append("\\t");
                    break;
                case '\0':
                    text.Append("\\0");
                    break;
                default:
                    if (char.IsControl(c) || (char.IsSurrogate(c) && !IsPaired(value, i)))
                    {
                        text.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        text.Append(c);
                    }

                    break;
            }
        }

        if (cut)
        {
            text.Append("… (").Append(value.Length.ToString(CultureInfo.InvariantCulture)).Append(" chars)");
        }

        return text.ToString();
    }

    private static bool NeedsEscaping(string value)
    {
        for (var i = 0; i < value.Length; i++)
        {
            var c = value[i];
            if (char.IsControl(c) || (char.IsSurrogate(c) && !IsPaired(value, i)))
            {
                return true;
            }
        }

        return false;
    }

    private static bool IsPaired(string value, int i) =>
        char.IsHighSurrogate(value[i])
            ? i + 1 < value.Length && char.IsLowSurrogate(value[i + 1])
            : i > 0 && char.IsHighSurrogate(value[i - 1]);
}
