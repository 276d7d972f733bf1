using System.Collections;
using System.Globalization;
using System.Text;
using Rbs.Shared.Text;
using Rbs.V1;

namespace Rbs.Agent.Execution;

/// <summary>
/// The tool's environment: the agent's own, plus only the client variables that describe the terminal and locale.
/// Anything else a client sends (PATH, LD_PRELOAD, BAZELISK_*, ...) could change what runs on the agent, so it is dropped.
/// </summary>
internal static class ToolEnvironment
{
    /// <summary>
    /// The most variables a start frame's <c>env</c> may carry. The allow-list has a dozen names plus the 13 standard
    /// <c>LC_*</c> categories; 100,000 variables stalled bazel, so the agent refuses a larger map (InvalidArgument)
    /// before it starts anything. The limits are part of the protocol (agent.proto).
    /// </summary>
    public const int MaxVariables = 128;

    /// <summary>The most bytes (UTF-8 names plus values) a start frame's <c>env</c> may carry; locale and terminal values are short.</summary>
    public const int MaxTotalBytes = 64 * 1024;

    private static readonly HashSet<string> s_allowed = new(StringComparer.Ordinal)
    {
        "TERM", "LANG", "TZ", "COLUMNS", "LINES", "NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "COLORTERM",
    };

    public static bool IsAllowed(string name) =>
        s_allowed.Contains(name) || name.StartsWith("LC_", StringComparison.Ordinal);

    /// <summary>Why <paramref name="clientEnv"/> exceeds <see cref="MaxVariables"/> or <see cref="MaxTotalBytes"/>; null when it fits.</summary>
    public static string? CheckLimits(IDictionary<string, string> clientEnv)
    {
        if (clientEnv.Count > MaxVariables)
        {
            return $"the start frame's env has {clientEnv.Count} variables; an agent accepts at most {MaxVariables} " +
                "(it uses only TERM, LANG, LC_*, TZ, COLUMNS, LINES and the colour variables). Forward only those.";
        }

        long total = 0;
        var largest = (Name: "", Bytes: 0L);
        foreach (var (name, value) in clientEnv)
        {
            long bytes = Encoding.UTF8.GetByteCount(name) + Encoding.UTF8.GetByteCount(value);
            total += bytes;
            if (bytes > largest.Bytes)
            {
                largest = (name, bytes);
            }
        }

        return total <= MaxTotalBytes
            ? null
            : $"the start frame's env is {total} bytes (names and values); an agent accepts at most {MaxTotalBytes}. " +
                $"The largest variable is {UntrustedText.Echo(largest.Name)} ({largest.Bytes} bytes): unset or shorten it.";
    }

    /// <param name="clientEnv">What the client forwarded (within <see cref="CheckLimits"/>'s limits).</param>
    /// <param name="terminal">Terminal size, used for COLUMNS/LINES when the client did not send them.</param>
    /// <param name="dropped">Names of client variables that were not allowed.</param>
    public static Dictionary<string, string> Build(
        IDictionary<string, string> clientEnv,
        TerminalInfo? terminal,
        List<string> dropped)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            if (entry.Key is string key && entry.Value is string value)
            {
                env[key] = value;
            }
        }

        foreach (var (name, value) in clientEnv)
        {
            if (IsAllowed(name) && !value.Contains('\0', StringComparison.Ordinal))
            {
                env[name] = value;
            }
            else
            {
                dropped.Add(name);
            }
        }

        if (terminal is not null)
        {
            if (terminal.Columns > 0 && !clientEnv.ContainsKey("COLUMNS"))
            {
                env["COLUMNS"] = terminal.Columns.ToString(CultureInfo.InvariantCulture);
            }

            if (terminal.Rows > 0 && !clientEnv.ContainsKey("LINES"))
            {
                env["LINES"] = terminal.Rows.ToString(CultureInfo.InvariantCulture);
            }

            if (!string.IsNullOrEmpty(terminal.Term) && !clientEnv.ContainsKey("TERM") && !terminal.Term.Contains('\0', StringComparison.Ordinal))
            {
                env["TERM"] = terminal.Term;
            }
        }

        return env;
    }
}
