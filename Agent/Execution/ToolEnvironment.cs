using System.Collections;
using System.Globalization;
using Rbs.V1;

namespace Rbs.Agent.Execution;

/// <summary>
/// The tool's environment: the agent's own, plus only the client variables that describe the terminal and locale.
/// Anything else a client sends (PATH, LD_PRELOAD, BAZELISK_*, ...) could change what runs on the agent, so it is dropped.
/// </summary>
internal static class ToolEnvironment
{
    private static readonly HashSet<string> s_allowed = new(StringComparer.Ordinal)
    {
        "TERM", "LANG", "TZ", "COLUMNS", "LINES", "NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "COLORTERM",
    };

    public static bool IsAllowed(string name) =>
        s_allowed.Contains(name) || name.StartsWith("LC_", StringComparison.Ordinal);

    /// <param name="clientEnv">What the client forwarded.</param>
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
