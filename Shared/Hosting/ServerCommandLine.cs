using System.Text;
using Rbs.Shared.Text;

namespace Rbs.Shared.Hosting;

/// <summary>A friendly flag of a server's command line and the configuration key it sets.</summary>
/// <param name="Name">The flag, e.g. <c>--port</c>.</param>
/// <param name="Key">The configuration key, e.g. <c>Orchestrator:Port</c> (environment <c>Orchestrator__Port</c>).</param>
/// <param name="Value">The value's placeholder in the help, e.g. <c>PORT</c>; null for a switch (bare = true).</param>
/// <param name="Default">The documented default, as the help shows it.</param>
/// <param name="Description">What it sets, one sentence.</param>
internal sealed record ServerFlag(string Name, string Key, string? Value, string Default, string Description)
{
    /// <summary>A switch may be written bare (<c>--local-mode</c>) or with true/false.</summary>
    public bool IsSwitch => Value is null;

    /// <summary>The environment-variable spelling of <see cref="Key"/>.</summary>
    public string EnvironmentVariable => ServerCommandLine.EnvironmentVariableFor(Key);
}

/// <summary>A configuration key documented in a server's help without a friendly flag of its own.</summary>
internal sealed record ServerSetting(string Key, string Default, string Description);

/// <summary>A command line the server cannot run with; the message is one sentence naming the argument.</summary>
internal sealed class CommandLineException(string message) : Exception(message);

/// <summary>The arguments after parsing: <c>--help</c>, or configuration keys and values.</summary>
internal sealed record ParsedCommandLine(bool Help, IReadOnlyDictionary<string, string?> Settings);

/// <summary>
/// A server's command line, the same for rbs-orchestrator, rbs-agent and rbs-gateway: friendly flags
/// (<c>--flag value</c> or <c>--flag=value</c>; switches bare or <c>=true|false</c>), any configuration key as
/// <c>--Section:Key value</c>, and <c>--help</c>. Anything else (an unknown flag, a flag without its value, a stray
/// word) is a <see cref="CommandLineException"/>, so a typo never starts a server with a default it did not ask for.
/// </summary>
internal sealed class ServerCommandLine
{
    private readonly Dictionary<string, ServerFlag> _byName = new(StringComparer.Ordinal);

    /// <param name="name">The executable, e.g. <c>rbs-gateway</c>; every message starts with it.</param>
    /// <param name="summary">What the server is, one line for the help.</param>
    /// <param name="flags">The friendly flags, in the order the help lists them.</param>
    /// <param name="listenFlags">The flags that choose where it listens, named when binding fails.</param>
    /// <param name="settings">Keys the help documents without a flag (e.g. the connection limits).</param>
    public ServerCommandLine(string name, string summary, IEnumerable<ServerFlag> flags, string listenFlags, IEnumerable<ServerSetting>? settings = null)
    {
        Name = name;
        Summary = summary;
        ListenFlags = listenFlags;
        Flags = [.. flags];
        Settings = [.. settings ?? []];
        foreach (var flag in Flags)
        {
            if (!_byName.TryAdd(flag.Name, flag))
            {
                throw new ArgumentException($"{name}: flag {flag.Name} is declared twice.", nameof(flags));
            }
        }
    }

    public string Name { get; }

    public string Summary { get; }

    public string ListenFlags { get; }

    public IReadOnlyList<ServerFlag> Flags { get; }

    public IReadOnlyList<ServerSetting> Settings { get; }

    /// <summary>The friendly flag that sets <paramref name="key"/>, if any (case-insensitive, as configuration keys are).</summary>
    public ServerFlag? FlagFor(string key) =>
        Flags.FirstOrDefault(flag => string.Equals(flag.Key, key, StringComparison.OrdinalIgnoreCase));

    /// <summary>How a message names a key: <c>--port (Orchestrator:Port)</c>, or the key alone.</summary>
    public string Describe(string key) => FlagFor(key) is { } flag ? $"{flag.Name} ({flag.Key})" : key;

    public static string EnvironmentVariableFor(string key) => key.Replace(":", "__", StringComparison.Ordinal);

    /// <summary>Parses <paramref name="args"/>; throws <see cref="CommandLineException"/> for anything it cannot use.</summary>
    public ParsedCommandLine Parse(IReadOnlyList<string> args)
    {
        var help = false;
        var settings = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (arg is "--help" or "-h" or "-?")
            {
                help = true;
                continue;
            }

            if (!arg.StartsWith("--", StringComparison.Ordinal) || arg.Length == 2)
            {
                throw new CommandLineException($"unexpected argument '{UntrustedText.Echo(arg)}': options start with '--' and take their value as --option value or --option=value.");
            }

            var equals = arg.IndexOf('=', StringComparison.Ordinal);
            var name = equals < 0 ? arg : arg[..equals];
            var inline = equals < 0 ? null : arg[(equals + 1)..];
            string? next = i + 1 < args.Count ? args[i + 1] : null;

            if (name.Contains(':', StringComparison.Ordinal))
            {
                // Any configuration key, e.g. --Agent:TerminateGracePeriod 00:00:01 (the documented long spelling).
                var key = name[2..];
                settings[key] = inline ?? TakeValue(name, "VALUE", next, ref i);
                continue;
            }

            if (!_byName.TryGetValue(name, out var flag))
            {
                throw new CommandLineException($"unknown option '{UntrustedText.Echo(name)}'.");
            }

            if (flag.IsSwitch)
            {
                var value = inline;
                if (value is null && next is not null && (IsBoolean(next)))
                {
                    value = next;
                    i++;
                }

                value ??= "true";
                if (!IsBoolean(value))
                {
                    throw new CommandLineException($"{flag.Name} is a switch: write {flag.Name}, {flag.Name}=true or {flag.Name}=false, not '{UntrustedText.Echo(value)}'.");
                }

                settings[flag.Key] = value;
            }
            else
            {
                settings[flag.Key] = inline ?? TakeValue(flag.Name, flag.Value!, next, ref i);
            }
        }

        return new ParsedCommandLine(help, settings);
    }

    /// <summary>The text <c>--help</c> prints.</summary>
    public string Usage()
    {
        var text = new StringBuilder();
        text.Append(Name).Append(": ").Append(Summary).Append("\n\n");
        text.Append("Usage: ").Append(Name).Append(" [options]\n\n");
        text.Append("Options (configuration key and environment variable; default):\n");
        foreach (var flag in Flags)
        {
            text.Append("  ").Append(flag.Name);
            if (!flag.IsSwitch)
            {
                text.Append(' ').Append(flag.Value);
            }

            text.Append("\n      ").Append(flag.Description)
                .Append("\n      ").Append(flag.Key).Append(", env ").Append(flag.EnvironmentVariable).Append("; default ").Append(flag.Default).Append('\n');
        }

        text.Append("  --help, -h\n      Show this help and exit.\n");
        if (Settings.Count > 0)
        {
            text.Append("\nSettings without a flag of their own (give them as --Key=value or env):\n");
            foreach (var setting in Settings)
            {
                text.Append("  ").Append(setting.Key).Append(" (env ").Append(EnvironmentVariableFor(setting.Key)).Append("; default ").Append(setting.Default).Append(")\n      ")
                    .Append(setting.Description).Append('\n');
            }
        }

        text.Append("""

            Every setting can also be given as --Section:Key=value, as the environment variable Section__Key or in
            appsettings.json; the command line wins over the environment, which wins over appsettings.json.
            Exit codes: 0 stopped normally; 2 a bad command line or setting (one line on stderr names it);
            1 could not start for another reason, e.g. the address is in use (one line on stderr says why).

            """);
        return text.ToString();
    }

    private static string TakeValue(string name, string placeholder, string? next, ref int i)
    {
        // A flag followed by another flag (or by nothing) lost its value; "-1" style values are still values.
        if (next is null || next.StartsWith("--", StringComparison.Ordinal))
        {
            throw new CommandLineException($"{name} needs a value ({name} {placeholder} or {name}={placeholder}).");
        }

        i++;
        return next;
    }

    private static bool IsBoolean(string value) =>
        value.Equals("true", StringComparison.OrdinalIgnoreCase) || value.Equals("false", StringComparison.OrdinalIgnoreCase);
}
