using System.Collections;
using System.Net;

namespace Rbs.JBazel.Configuration;

/// <summary>
/// What jbazel reads from its process environment, injectable so tests can supply their own variables,
/// home directory and working directory.
/// </summary>
internal sealed record CliEnvironment(
    IReadOnlyDictionary<string, string> Variables,
    string CurrentDirectory,
    string? HomeDirectory,
    string HostName)
{
    public static CliEnvironment FromProcess()
    {
        var variables = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            if (entry.Key is string key && entry.Value is string value)
            {
                variables[key] = value;
            }
        }

        // HOME first, like a shell; fall back to the password database's idea of it.
        var home = variables.TryGetValue("HOME", out var h) && h.Length > 0
            ? h
            : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);

        return new CliEnvironment(
            variables,
            Directory.GetCurrentDirectory(),
            string.IsNullOrEmpty(home) ? null : home,
            // Dns.GetHostName is gethostname(2) without a DNS lookup; Environment.MachineName would cut
            // the name at its first dot.
            Dns.GetHostName());
    }

    public string? Get(string name) => Variables.TryGetValue(name, out var value) ? value : null;
}
