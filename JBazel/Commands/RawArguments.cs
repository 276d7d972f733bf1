using Rbs.Shared.Text;

namespace Rbs.JBazel.Commands;

/// <summary>
/// jbazel's arguments as the bytes it was given. The runtime decodes argv as UTF-8 and replaces every invalid byte with
/// U+FFFD, which would reach the remote binary changed (`jbazel run //x -- $'\xff'`); /proc/self/cmdline has the bytes,
/// decoded here with <see cref="ArgumentBytes"/> so they survive to the agent.
/// </summary>
internal static class RawArguments
{
    /// <summary><paramref name="args"/>, with the exact bytes of /proc/self/cmdline where the runtime replaced some;
    /// <paramref name="args"/> itself when nothing was replaced or the file does not match (not Linux, a runtime that
    /// strips its own options).</summary>
    public static IReadOnlyList<string> FromProcess(string[] args)
    {
        if (!args.Any(arg => arg.Contains('\uFFFD', StringComparison.Ordinal)))
        {
            return args;
        }

        try
        {
            return Match(File.ReadAllBytes("/proc/self/cmdline"), args) ?? args;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return args;
        }
    }

    /// <summary>The arguments of a NUL-separated command line (argv[0] first) when they correspond one to one with
    /// <paramref name="args"/>; null otherwise.</summary>
    internal static IReadOnlyList<string>? Match(ReadOnlySpan<byte> cmdline, IReadOnlyList<string> args)
    {
        var all = new List<byte[]>();
        while (!cmdline.IsEmpty)
        {
            var end = cmdline.IndexOf((byte)0);
            all.Add(cmdline[..(end < 0 ? cmdline.Length : end)].ToArray());
            cmdline = end < 0 ? [] : cmdline[(end + 1)..];
        }

        if (all.Count != args.Count + 1)
        {
            return null;
        }

        var raw = new List<string>(args.Count);
        for (var i = 0; i < args.Count; i++)
        {
            // The same argument: the runtime's own decoding of these bytes (U+FFFD per maximal bad sequence).
            var bytes = all[i + 1];
            if (System.Text.Encoding.UTF8.GetString(bytes) != args[i])
            {
                return null;
            }

            raw.Add(ArgumentBytes.Decode(bytes));
        }

        return raw;
    }
}
