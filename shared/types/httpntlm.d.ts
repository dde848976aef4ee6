// The NTLM message functions of httpntlm (https://github.com/SamDecrock/node-http-ntlm), which ships no types.
declare module "httpntlm" {
  export interface NtlmOptions {
    username?: string;
    password?: string;
    domain?: string;
    workstation?: string;
  }
  export interface NtlmType2 {
    serverChallenge: Buffer;
    negotiateFlags: number;
    targetInfo?: Buffer;
  }
  export const ntlm: {
    createType1Message(options: NtlmOptions): string;
    parseType2Message(header: string, callback: (error: Error) => void): NtlmType2 | null;
    createType3Message(type2: NtlmType2, options: NtlmOptions): string;
    create_NT_hashed_password(password: string): Buffer;
  };
}
